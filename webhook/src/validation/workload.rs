//! Pod templates: the pod-bearing kinds, where their pod spec lives, and validation of it.
//!
//! Upstream validates a workload's template like a pod at the workload's own admission, but not
//! Portico's rules; without template checks a mistake only surfaces later as `FailedCreate` events
//! on a ReplicaSet or Job, far from the `kubectl apply` that caused it.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use portico_allocators::field::FieldError;

use serde_json::value::RawValue;

use super::Options;
use super::findings::Findings;
use super::json;
use super::pod::{check_pod_spec, validate_pod_spec_ports};

/// A kind whose objects carry a pod spec (core/v1 Pod, apps/v1 and batch/v1 workloads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// core/v1 `Pod`: `spec`.
    Pod,
    /// apps/v1 `Deployment`: `spec.template.spec`.
    Deployment,
    /// apps/v1 `StatefulSet`: `spec.template.spec`.
    StatefulSet,
    /// apps/v1 `DaemonSet`: `spec.template.spec`.
    DaemonSet,
    /// apps/v1 `ReplicaSet`: `spec.template.spec`.
    ReplicaSet,
    /// batch/v1 `Job`: `spec.template.spec`.
    Job,
    /// batch/v1 `CronJob`: `spec.jobTemplate.spec.template.spec`.
    CronJob,
}

impl WorkloadKind {
    /// Every kind, in a fixed order.
    pub const ALL: [WorkloadKind; 7] = [
        WorkloadKind::Pod,
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
    ];

    /// The kind named `kind` (case-sensitive, as in `AdmissionRequest.kind.kind`), whatever its group.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.kind() == kind)
    }

    /// The kind named `kind` in API group `group` (`""` for core). Prefer this one in the server:
    /// a CRD may well be called `Deployment` in some other group.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Self> {
        Self::from_kind(kind).filter(|k| k.group() == group)
    }

    /// The kind's name.
    pub fn kind(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }

    /// The kind's API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "",
            WorkloadKind::Deployment
            | WorkloadKind::StatefulSet
            | WorkloadKind::DaemonSet
            | WorkloadKind::ReplicaSet => "apps",
            WorkloadKind::Job | WorkloadKind::CronJob => "batch",
        }
    }

    /// Field path of the pod spec in an object of this kind, the prefix of every error path.
    pub fn pod_spec_path(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "spec",
            WorkloadKind::CronJob => "spec.jobTemplate.spec.template.spec",
            _ => "spec.template.spec",
        }
    }
}

/// Field path of the pod spec for objects of `kind` (`"spec"`, `"spec.template.spec"` or
/// `"spec.jobTemplate.spec.template.spec"`), or `None` for a kind without one.
pub fn pod_spec_path(kind: &str) -> Option<&'static str> {
    WorkloadKind::from_kind(kind).map(WorkloadKind::pod_spec_path)
}

/// A typed object that carries a pod spec.
pub trait PodSpecHolder {
    /// The object's kind.
    const KIND: WorkloadKind;
    /// The pod spec, if the object has one.
    fn pod_spec(&self) -> Option<&PodSpec>;
}

impl PodSpecHolder for Pod {
    const KIND: WorkloadKind = WorkloadKind::Pod;
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()
    }
}

impl PodSpecHolder for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl PodSpecHolder for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl PodSpecHolder for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl PodSpecHolder for ReplicaSet {
    const KIND: WorkloadKind = WorkloadKind::ReplicaSet;
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.as_ref()?.spec.as_ref()
    }
}

impl PodSpecHolder for Job {
    const KIND: WorkloadKind = WorkloadKind::Job;
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl PodSpecHolder for CronJob {
    const KIND: WorkloadKind = WorkloadKind::CronJob;
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec
            .as_ref()?
            .job_template
            .spec
            .as_ref()?
            .template
            .spec
            .as_ref()
    }
}

/// Validates the pod spec of a typed Pod or workload, with the kind's field paths. An object
/// without a pod spec has nothing to check.
pub fn validate_workload<T: PodSpecHolder>(object: &T, opts: &Options) -> Vec<FieldError> {
    object
        .pod_spec()
        .map(|spec| validate_pod_spec_ports(spec, T::KIND.pod_spec_path(), opts))
        .unwrap_or_default()
}

/// The part of an object that could not be decoded into its typed form.
///
/// The apiserver decodes every object before calling webhooks, so a real request never produces
/// one; a synthetic or hostile review can (wrong JSON types, floats or numbers beyond 32 bits where
/// the API has `int32`).
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {path}: {source}")]
pub struct DecodeError {
    /// Field path of the value that did not decode, e.g. `spec.template.spec` (`object` for the
    /// object itself).
    pub path: String,
    /// What serde said about it.
    #[source]
    pub source: serde_json::Error,
}

impl DecodeError {
    /// A decode error at `path`, with serde's message (without the position `serde_json` adds:
    /// it would point into a slice of the body).
    pub fn new(path: &str, e: &serde_json::Error) -> Self {
        DecodeError {
            path: path.to_owned(),
            source: serde::de::Error::custom(json::message(e)),
        }
    }
}

/// Validates the pod spec of an object given as JSON (an AdmissionReview's `object`).
///
/// Only the pod spec (and the objects leading to it) is decoded, so unrelated fields cannot make
/// the review fail. A missing or `null` step on the way means there is no pod spec to check.
pub fn validate_workload_value(
    kind: WorkloadKind,
    object: &serde_json::Value,
    opts: &Options,
) -> Result<Vec<FieldError>, DecodeError> {
    let text = serde_json::to_string(object).map_err(|e| DecodeError::new("object", &e))?;
    let raw: &RawValue = serde_json::from_str(&text).map_err(|e| DecodeError::new("object", &e))?;
    let mut sink = Findings::all();
    check_workload(kind, raw, opts, &mut sink)?;
    Ok(sink.into_vec())
}

/// [`validate_workload_value`] on the raw object of a review, into `sink`: the path to the pod
/// spec is walked without building anything else, and the spec is read off the body.
pub(crate) fn check_workload(
    kind: WorkloadKind,
    object: &RawValue,
    opts: &Options,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    if json::is_null(object) {
        return Ok(());
    }
    let Some([spec]) = json::members(object, ["spec"]) else {
        let source = json::decode::<std::collections::HashMap<json::Text<'_>, serde::de::IgnoredAny>>(object)
            .err()
            .unwrap_or_else(|| serde::de::Error::custom("expected a map"));
        return Err(DecodeError::new("object", &source));
    };
    check_workload_spec(kind, spec, opts, sink)
}

/// [`check_workload`] from the object's `spec` (`None`: absent), already found.
pub(crate) fn check_workload_spec(
    kind: WorkloadKind,
    spec: Option<&RawValue>,
    opts: &Options,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    let path = kind.pod_spec_path();
    let Some(mut current) = spec else {
        return Ok(());
    };
    let mut walked = String::from("spec");
    for segment in path.split('.').skip(1) {
        if json::is_null(current) {
            return Ok(());
        }
        let Some([next]) = json::members(current, [segment]) else {
            // Let serde phrase the type error ("invalid type: integer `7`, expected a map").
            // (`current` is not an object here, so nothing is built.)
            let source =
                json::decode::<std::collections::HashMap<json::Text<'_>, serde::de::IgnoredAny>>(current)
                    .err()
                    .unwrap_or_else(|| serde::de::Error::custom("expected a map"));
            return Err(DecodeError::new(&walked, &source));
        };
        walked.push('.');
        walked.push_str(segment);
        match next {
            Some(next) => current = next,
            None => return Ok(()),
        }
    }
    if json::is_null(current) {
        return Ok(());
    }
    check_pod_spec(current, path, opts, sink)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobSpec, JobTemplateSpec};
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodTemplateSpec};
    use serde_json::json;

    use super::*;

    fn bad_spec() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![ContainerPort {
                    container_port: 0,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }
    }

    fn template() -> PodTemplateSpec {
        PodTemplateSpec {
            spec: Some(bad_spec()),
            ..PodTemplateSpec::default()
        }
    }

    #[test]
    fn paths_per_kind() {
        assert_eq!(pod_spec_path("Pod"), Some("spec"));
        for k in ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"] {
            assert_eq!(pod_spec_path(k), Some("spec.template.spec"), "{k}");
        }
        assert_eq!(
            pod_spec_path("CronJob"),
            Some("spec.jobTemplate.spec.template.spec")
        );
        for k in ["Service", "pod", "", "ReplicationController", "PodTemplate"] {
            assert_eq!(pod_spec_path(k), None, "{k}");
        }
        assert_eq!(
            WorkloadKind::from_group_kind("apps", "Deployment"),
            Some(WorkloadKind::Deployment)
        );
        assert_eq!(WorkloadKind::from_group_kind("", "Pod"), Some(WorkloadKind::Pod));
        assert_eq!(
            WorkloadKind::from_group_kind("batch", "CronJob"),
            Some(WorkloadKind::CronJob)
        );
        assert_eq!(WorkloadKind::from_group_kind("example.com", "Deployment"), None);
        assert_eq!(WorkloadKind::from_group_kind("apps", "Job"), None);
        for k in WorkloadKind::ALL {
            assert_eq!(WorkloadKind::from_group_kind(k.group(), k.kind()), Some(k));
        }
    }

    fn first(errs: Vec<FieldError>) -> String {
        errs.first().map(ToString::to_string).unwrap_or_default()
    }

    #[test]
    fn typed_objects() {
        let opts = Options::default();
        let want = |prefix: &str| format!("{prefix}.containers[0].ports[0].containerPort: Required value");
        let pod = Pod {
            spec: Some(bad_spec()),
            ..Pod::default()
        };
        assert_eq!(first(validate_workload(&pod, &opts)), want("spec"));
        let d = Deployment {
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
                template: template(),
                ..Default::default()
            }),
            ..Deployment::default()
        };
        assert_eq!(first(validate_workload(&d, &opts)), want("spec.template.spec"));
        let s = StatefulSet {
            spec: Some(k8s_openapi::api::apps::v1::StatefulSetSpec {
                template: template(),
                ..Default::default()
            }),
            ..StatefulSet::default()
        };
        assert_eq!(first(validate_workload(&s, &opts)), want("spec.template.spec"));
        let ds = DaemonSet {
            spec: Some(k8s_openapi::api::apps::v1::DaemonSetSpec {
                template: template(),
                ..Default::default()
            }),
            ..DaemonSet::default()
        };
        assert_eq!(first(validate_workload(&ds, &opts)), want("spec.template.spec"));
        let rs = ReplicaSet {
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                template: Some(template()),
                ..Default::default()
            }),
            ..ReplicaSet::default()
        };
        assert_eq!(first(validate_workload(&rs, &opts)), want("spec.template.spec"));
        let job_spec = JobSpec {
            template: template(),
            ..JobSpec::default()
        };
        let job = Job {
            spec: Some(job_spec.clone()),
            ..Job::default()
        };
        assert_eq!(first(validate_workload(&job, &opts)), want("spec.template.spec"));
        let cj = CronJob {
            spec: Some(CronJobSpec {
                job_template: JobTemplateSpec {
                    spec: Some(job_spec),
                    ..JobTemplateSpec::default()
                },
                ..CronJobSpec::default()
            }),
            ..CronJob::default()
        };
        assert_eq!(
            first(validate_workload(&cj, &opts)),
            want("spec.jobTemplate.spec.template.spec")
        );
        // No spec at all: nothing to check.
        assert!(validate_workload(&CronJob::default(), &opts).is_empty());
        assert!(validate_workload(&ReplicaSet::default(), &opts).is_empty());
        assert!(validate_workload(&Pod::default(), &opts).is_empty());
    }

    #[test]
    fn json_objects() {
        let opts = Options::default();
        let containers = json!([{"name": "app", "ports": [{"name": "http", "containerPort": 80},
                                                           {"name": "http", "containerPort": 81}]}]);
        let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "containers": containers, "unknownFutureField": {"x": 1}}}}}}});
        assert_eq!(
            first(validate_workload_value(WorkloadKind::CronJob, &cron, &opts).unwrap()),
            r#"spec.jobTemplate.spec.template.spec.containers[0].ports[1].name: Duplicate value: "http""#
        );
        let deploy = json!({"spec": {"replicas": "not even checked", "template": {"spec": {"containers": containers}}}});
        assert_eq!(
            first(validate_workload_value(WorkloadKind::Deployment, &deploy, &opts).unwrap()),
            r#"spec.template.spec.containers[0].ports[1].name: Duplicate value: "http""#
        );
        let pod = json!({"spec": {"containers": [{"name": "a", "ports": [{}]}]}});
        assert_eq!(
            first(validate_workload_value(WorkloadKind::Pod, &pod, &opts).unwrap()),
            "spec.containers[0].ports[0].containerPort: Required value"
        );
        for nothing in [
            json!({}),
            json!(null),
            json!({"spec": null}),
            json!({"spec": {}}),
            json!({"spec": {"template": null}}),
            json!({"spec": {"template": {"spec": null}}}),
            json!({"spec": {"template": {"spec": {}}}}),
        ] {
            assert!(
                validate_workload_value(WorkloadKind::Job, &nothing, &opts)
                    .unwrap()
                    .is_empty(),
                "{nothing}"
            );
        }
    }

    #[test]
    fn json_decode_errors() {
        let opts = Options::default();
        let cases = [
            (
                json!(7),
                "cannot decode object: invalid type: integer `7`, expected a map",
            ),
            (
                json!({"spec": []}),
                "cannot decode spec: invalid type: sequence, expected a map",
            ),
            (
                json!({"spec": {"template": "x"}}),
                r#"cannot decode spec.template: invalid type: string "x", expected a map"#,
            ),
        ];
        for (value, want) in cases {
            let err = validate_workload_value(WorkloadKind::Job, &value, &opts).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let huge = json!({"spec": {"template": {"spec": {"containers": [{"name": "a",
            "ports": [{"containerPort": 4294967296_u64}]}]}}}});
        let err = validate_workload_value(WorkloadKind::Job, &huge, &opts).unwrap_err();
        assert_eq!(err.path, "spec.template.spec");
        let float =
            json!({"spec": {"containers": [{"name": "a", "livenessProbe": {"httpGet": {"port": 80.5}}}]}});
        assert!(validate_workload_value(WorkloadKind::Pod, &float, &opts).is_err());
        let neg =
            json!({"spec": {"containers": [{"name": "a", "livenessProbe": {"httpGet": {"port": -3}}}]}});
        assert_eq!(
            first(validate_workload_value(WorkloadKind::Pod, &neg, &opts).unwrap()),
            "spec.containers[0].livenessProbe.httpGet.port: Invalid value: -3: must be between 1 and 65535, inclusive"
        );
    }
}
