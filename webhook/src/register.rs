//! Registers the webhook with the apiserver: a ValidatingWebhookConfiguration pointing at the
//! server, with the CA that signed its certificate as `caBundle`.
//!
//! Used out of cluster (`portico run --webhook-url ...`, `portico dev`, tests), where nothing else
//! installs the configuration; in a cluster the chart can install the same object. The object is
//! written with server-side apply (field manager [`Registration::field_manager`], forced), so
//! registering again is idempotent and takes over the fields from any previous writer; the
//! apiserver picks the change up within about a second.
//!
//! What the configuration sends to `/validate`: CREATE and UPDATE of `services` and `pods` (core
//! v1), `deployments`, `statefulsets`, `daemonsets`, `replicasets` (apps/v1), `jobs`, `cronjobs`
//! (batch/v1), namespaced only, never subresources. `sideEffects: None` (dry runs are fine),
//! `admissionReviewVersions: [v1]`, `matchPolicy: Equivalent`.
//!
//! A second webhook in the same configuration, [`ENDPOINTS_WEBHOOK_NAME`], sends CREATE and UPDATE
//! of `endpoints` (core v1) and `endpointslices` (discovery.k8s.io/v1) to the same `/validate`,
//! except objects carrying a managed-by label (`objectSelector`: both labels `DoesNotExist`), so
//! controllers' writes never reach Portico; `failurePolicy: Ignore` whatever
//! [`Registration::failure_policy`] says, so an outage never holds up a controller or
//! kube-apiserver's own `default/kubernetes` reconciler (which the webhook admits anyway).

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use crate::error::Error;

/// The label every namespace carries with its own name (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What the apiserver does when the webhook cannot be reached or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Refuse the request (the API default).
    #[default]
    Fail,
    /// Let it through unchecked.
    Ignore,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// How the apiserver reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEndpoint {
    /// The server's base URL, `https://host:port` (out of cluster); `/validate` is appended.
    Url(String),
    /// A Service in front of the webhook pods (in cluster); path `/validate`.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its port (443 if `None`).
        port: Option<i32>,
    },
}

/// Which namespaces' objects are sent to the webhook (by the `kubernetes.io/metadata.name` label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// All but these (e.g. `kube-system`, `kube-node-lease` and the webhook's own namespace).
    AllExcept(Vec<String>),
    /// Only these.
    Only(Vec<String>),
}

/// A webhook configuration to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Name of the ValidatingWebhookConfiguration object. Default `portico`.
    pub name: String,
    /// Name of the webhook inside it (fully qualified; the apiserver quotes it in its messages:
    /// `admission webhook "<name>" denied the request: ...`). Default `ports.portico.dev`.
    pub webhook_name: String,
    /// Where the webhook is.
    pub endpoint: WebhookEndpoint,
    /// PEM of the CA that signed the serving certificate.
    pub ca_bundle_pem: String,
    /// Default `Fail`.
    pub failure_policy: FailurePolicy,
    /// 1 to 30 seconds. Default 5.
    pub timeout_seconds: i32,
    /// Default: all but `kube-system` and `kube-node-lease`.
    pub namespaces: Namespaces,
    /// Field manager of the server-side apply. Default `portico-webhook`.
    pub field_manager: String,
}

impl Registration {
    /// A registration of the server at `base_url` (`https://127.0.0.1:8443`) with the defaults.
    pub fn for_url(base_url: impl Into<String>, ca_bundle_pem: impl Into<String>) -> Self {
        Self::with_endpoint(WebhookEndpoint::Url(base_url.into()), ca_bundle_pem)
    }

    /// A registration of `endpoint` with the defaults.
    pub fn with_endpoint(endpoint: WebhookEndpoint, ca_bundle_pem: impl Into<String>) -> Self {
        Registration {
            name: "portico".into(),
            webhook_name: "ports.portico.dev".into(),
            endpoint,
            ca_bundle_pem: ca_bundle_pem.into(),
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 5,
            namespaces: Namespaces::AllExcept(vec!["kube-system".into(), "kube-node-lease".into()]),
            field_manager: "portico-webhook".into(),
        }
    }

    fn check(&self) -> Result<(), Error> {
        if !(1..=30).contains(&self.timeout_seconds) {
            return Err(Error::Config(format!(
                "timeoutSeconds must be between 1 and 30, not {}",
                self.timeout_seconds
            )));
        }
        if let WebhookEndpoint::Url(url) = &self.endpoint
            && !url.starts_with("https://")
        {
            return Err(Error::Config(format!(
                "webhook URL must start with https://, not {url:?}"
            )));
        }
        if self.webhook_name.split('.').filter(|s| !s.is_empty()).count() < 3 {
            return Err(Error::Config(format!(
                "webhook name must be fully qualified (three or more DNS labels), not {:?}",
                self.webhook_name
            )));
        }
        Ok(())
    }
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

fn rule(group: &str, resources: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: strings(&[group]),
        api_versions: strings(&["v1"]),
        operations: strings(&["CREATE", "UPDATE"]),
        resources: strings(resources),
        scope: Some("Namespaced".into()),
    }
}

fn client_config(reg: &Registration, path: &str) -> WebhookClientConfig {
    let ca_bundle = Some(ByteString(reg.ca_bundle_pem.clone().into_bytes()));
    match &reg.endpoint {
        WebhookEndpoint::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle,
            service: None,
        },
        WebhookEndpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            url: None,
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.into()),
                port: *port,
            }),
        },
    }
}

fn namespace_selector(reg: &Registration) -> LabelSelector {
    let (operator, values) = match &reg.namespaces {
        Namespaces::AllExcept(names) => ("NotIn", names.clone()),
        Namespaces::Only(names) => ("In", names.clone()),
    };
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.into(),
            operator: operator.into(),
            values: Some(values),
        }]),
        match_labels: None,
    }
}

/// Name of the endpoint-address webhook inside the ValidatingWebhookConfiguration.
pub const ENDPOINTS_WEBHOOK_NAME: &str = "endpoints.portico.dev";

/// Leaves out objects carrying either managed-by label (controller-managed Endpoints and
/// EndpointSlices): both `DoesNotExist`.
pub fn unmanaged_endpoints_selector() -> LabelSelector {
    let absent = |key: &str| LabelSelectorRequirement {
        key: key.into(),
        operator: "DoesNotExist".into(),
        values: None,
    };
    LabelSelector {
        match_expressions: Some(vec![
            absent(crate::validation::endpoints::ENDPOINTS_MANAGED_BY),
            absent(crate::validation::endpoints::ENDPOINTSLICE_MANAGED_BY),
        ]),
        match_labels: None,
    }
}

fn metadata(reg: &Registration) -> ObjectMeta {
    ObjectMeta {
        name: Some(reg.name.clone()),
        labels: Some([("app.kubernetes.io/managed-by".to_owned(), "portico".to_owned())].into()),
        ..ObjectMeta::default()
    }
}

/// The configuration object [`register`] applies.
pub fn validating_configuration(reg: &Registration) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: metadata(reg),
        webhooks: Some(vec![
            ValidatingWebhook {
                name: reg.webhook_name.clone(),
                admission_review_versions: vec!["v1".into()],
                client_config: client_config(reg, "/validate"),
                failure_policy: Some(reg.failure_policy.as_str().into()),
                match_policy: Some("Equivalent".into()),
                namespace_selector: Some(namespace_selector(reg)),
                object_selector: None,
                match_conditions: None,
                rules: Some(vec![
                    rule("", &["services", "pods"]),
                    rule(
                        "apps",
                        &["deployments", "statefulsets", "daemonsets", "replicasets"],
                    ),
                    rule("batch", &["jobs", "cronjobs"]),
                ]),
                side_effects: "None".into(),
                timeout_seconds: Some(reg.timeout_seconds),
            },
            ValidatingWebhook {
                name: ENDPOINTS_WEBHOOK_NAME.into(),
                admission_review_versions: vec!["v1".into()],
                client_config: client_config(reg, "/validate"),
                failure_policy: Some(FailurePolicy::Ignore.as_str().into()),
                match_policy: Some("Equivalent".into()),
                namespace_selector: Some(namespace_selector(reg)),
                object_selector: Some(unmanaged_endpoints_selector()),
                match_conditions: None,
                rules: Some(vec![
                    rule("", &["endpoints"]),
                    rule("discovery.k8s.io", &["endpointslices"]),
                ]),
                side_effects: "None".into(),
                timeout_seconds: Some(reg.timeout_seconds),
            },
        ]),
    }
}

/// Name of the allocation webhook inside the MutatingWebhookConfiguration.
pub const ALLOCATION_WEBHOOK_NAME: &str = "allocation.portico.dev";

/// The MutatingWebhookConfiguration for clusterIP/nodePort allocation: Services on CREATE and
/// UPDATE to `/mutate`. Never DELETE: values come back when Portico's watch sees the Service
/// gone, so an outage with `failurePolicy: Fail` cannot block deletes. Allocation writes its state only for real requests,
/// hence `sideEffects: NoneOnDryRun`; a later mutating webhook cannot unset what it assigned,
/// so it is not re-invoked.
pub fn mutating_configuration(reg: &Registration) -> MutatingWebhookConfiguration {
    let mut rule = rule("", &["services"]);
    rule.operations = strings(&["CREATE", "UPDATE"]);
    MutatingWebhookConfiguration {
        metadata: metadata(reg),
        webhooks: Some(vec![MutatingWebhook {
            name: ALLOCATION_WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(reg, "/mutate"),
            failure_policy: Some(reg.failure_policy.as_str().into()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(namespace_selector(reg)),
            object_selector: None,
            match_conditions: None,
            reinvocation_policy: Some("Never".into()),
            rules: Some(vec![rule]),
            side_effects: "NoneOnDryRun".into(),
            timeout_seconds: Some(reg.timeout_seconds),
        }]),
    }
}

/// Creates or updates the MutatingWebhookConfiguration for allocation (server-side apply).
pub async fn register_mutating(
    client: &kube::Client,
    reg: &Registration,
) -> Result<MutatingWebhookConfiguration, Error> {
    reg.check()?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let params = PatchParams::apply(&reg.field_manager).force();
    let applied = api
        .patch(&reg.name, &params, &Patch::Apply(&mutating_configuration(reg)))
        .await?;
    tracing::info!(name = %reg.name, endpoint = ?reg.endpoint, "mutating webhook configuration registered");
    Ok(applied)
}

/// Deletes the MutatingWebhookConfiguration `name`; absent is fine.
pub async fn unregister_mutating(client: &kube::Client, name: &str) -> Result<(), Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates or updates the ValidatingWebhookConfiguration for `reg` (server-side apply).
pub async fn register(
    client: &kube::Client,
    reg: &Registration,
) -> Result<ValidatingWebhookConfiguration, Error> {
    reg.check()?;
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let params = PatchParams::apply(&reg.field_manager).force();
    let applied = api
        .patch(&reg.name, &params, &Patch::Apply(&validating_configuration(reg)))
        .await?;
    tracing::info!(name = %reg.name, endpoint = ?reg.endpoint, "webhook configuration registered");
    Ok(applied)
}

/// Deletes the ValidatingWebhookConfiguration `name`; absent is fine.
pub async fn unregister(client: &kube::Client, name: &str) -> Result<(), Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_configuration() {
        let mut reg = Registration::for_url("https://127.0.0.1:8443/", "PEM");
        reg.namespaces = Namespaces::Only(vec!["ns-a".into()]);
        let v = serde_json::to_value(validating_configuration(&reg)).unwrap();
        let w = &v["webhooks"][0];
        assert_eq!(v["kind"], "ValidatingWebhookConfiguration");
        assert_eq!(v["metadata"]["name"], "portico");
        assert_eq!(w["clientConfig"]["url"], "https://127.0.0.1:8443/validate");
        assert_eq!(w["clientConfig"]["caBundle"], "UEVN"); // base64("PEM")
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["timeoutSeconds"], 5);
        assert_eq!(
            w["namespaceSelector"],
            serde_json::json!({"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ns-a"]}]})
        );
        let rules = w["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[1]["apiGroups"], serde_json::json!(["apps"]));
        assert_eq!(rules[2]["resources"], serde_json::json!(["jobs", "cronjobs"]));
        assert!(
            w.get("matchConditions").is_none(),
            "fields newer than 1.24 stay unset"
        );
        reg.check().unwrap();

        // The endpoint-address webhook: hand-written Endpoints and EndpointSlices only.
        let e = &v["webhooks"][1];
        assert_eq!(e["name"], ENDPOINTS_WEBHOOK_NAME);
        assert_eq!(e["clientConfig"], w["clientConfig"]);
        assert_eq!(e["namespaceSelector"], w["namespaceSelector"]);
        assert_eq!(e["failurePolicy"], "Ignore");
        assert_eq!(e["sideEffects"], "None");
        assert_eq!(
            e["objectSelector"],
            serde_json::json!({"matchExpressions": [
                {"key": "endpoints.kubernetes.io/managed-by", "operator": "DoesNotExist"},
                {"key": "endpointslice.kubernetes.io/managed-by", "operator": "DoesNotExist"}]})
        );
        assert_eq!(
            e["rules"],
            serde_json::json!([
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["endpoints"], "scope": "Namespaced"},
                {"apiGroups": ["discovery.k8s.io"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["endpointslices"], "scope": "Namespaced"}])
        );
        assert!(e.get("matchConditions").is_none());
    }

    #[test]
    fn mutating_configuration_targets_services_with_dry_run_safe_side_effects() {
        let reg = Registration::for_url("https://127.0.0.1:8443", "PEM");
        let v = serde_json::to_value(mutating_configuration(&reg)).unwrap();
        let w = &v["webhooks"][0];
        assert_eq!(v["kind"], "MutatingWebhookConfiguration");
        assert_eq!(w["name"], ALLOCATION_WEBHOOK_NAME);
        assert_eq!(w["clientConfig"]["url"], "https://127.0.0.1:8443/mutate");
        assert_eq!(w["sideEffects"], "NoneOnDryRun");
        assert_eq!(w["reinvocationPolicy"], "Never");
        assert_eq!(
            w["rules"],
            serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["services"], "scope": "Namespaced"}])
        );
    }

    #[test]
    fn service_configuration_and_checks() {
        let mut reg = Registration::with_endpoint(
            WebhookEndpoint::Service {
                namespace: "portico".into(),
                name: "portico-webhook".into(),
                port: None,
            },
            "PEM",
        );
        let v = serde_json::to_value(validating_configuration(&reg)).unwrap();
        let cc = &v["webhooks"][0]["clientConfig"];
        assert_eq!(cc["service"]["path"], "/validate");
        assert!(cc.get("url").is_none());
        assert_eq!(
            v["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["operator"],
            "NotIn"
        );
        reg.timeout_seconds = 31;
        assert!(reg.check().is_err());
        reg.timeout_seconds = 3;
        reg.webhook_name = "portico".into();
        assert!(reg.check().is_err());
        let reg = Registration::for_url("http://127.0.0.1:1", "PEM");
        assert!(reg.check().is_err());
    }
}
