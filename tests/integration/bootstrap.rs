//! Self-managed webhook certificates against a real apiserver: replicas racing to create the
//! Secret converge on one, a SAN change rotates it once however many replicas notice, and
//! `caBundle` is patched onto existing webhook configurations without touching anything else.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ValidatingWebhook, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use portico_webhook::bootstrap::{CertBootstrap, service_sans};
use portico_webhook::{CertStore, ensure_tls_secret, patch_ca_bundle};

use crate::support::setup;

const SECRET: &str = "portico-webhook-tls";

fn data(secret: &Secret, key: &str) -> String {
    let bytes = secret.data.as_ref().and_then(|d| d.get(key)).expect(key);
    String::from_utf8(bytes.0.clone()).expect("UTF-8")
}

#[tokio::test]
async fn racing_replicas_converge_on_one_secret_and_rotate_it_once() {
    let ns = "bootstrap-race";
    let Some((cp, client)) = setup(ns).await else {
        return;
    };
    // Two replicas, each with its own client (connection pool), start at the same time.
    let other = cp.client().await.expect("second client");
    let sans = service_sans("portico-webhook", ns);
    let (a, b) = tokio::join!(
        ensure_tls_secret(&client, ns, SECRET, &sans),
        ensure_tls_secret(&other, ns, SECRET, &sans)
    );
    let (a, b) = (a.expect("first replica"), b.expect("second replica"));
    assert_eq!(a, b, "both replicas use the same certificates");

    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let all = secrets.list(&ListParams::default()).await.expect("list");
    let ours: Vec<_> = all
        .items
        .iter()
        .filter(|s| s.metadata.name.as_deref() == Some(SECRET))
        .collect();
    assert_eq!(ours.len(), 1);
    let stored = ours[0];
    assert_eq!(stored.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(data(stored, "tls.crt"), a.cert_pem);
    assert_eq!(data(stored, "tls.key"), a.key_pem);
    assert_eq!(data(stored, "ca.crt"), a.ca_pem);
    assert!(data(stored, "ca.key").contains("PRIVATE KEY"));
    let version = stored.metadata.resource_version.clone();

    // A later start finds it and changes nothing.
    let again = ensure_tls_secret(&other, ns, SECRET, &sans)
        .await
        .expect("restart");
    assert_eq!(again, a);
    assert_eq!(
        secrets.get(SECRET).await.expect("get").metadata.resource_version,
        version
    );

    // New SANs (e.g. the Service was renamed): both replicas notice at once; one rewrites the
    // Secret, the other adopts its result. The CA, hence caBundle, stays.
    let renamed = service_sans("portico-admission", ns);
    let (a2, b2) = tokio::join!(
        ensure_tls_secret(&client, ns, SECRET, &renamed),
        ensure_tls_secret(&other, ns, SECRET, &renamed)
    );
    let (a2, b2) = (a2.expect("first replica"), b2.expect("second replica"));
    assert_eq!(a2, b2);
    assert_eq!(
        a2.ca_pem, a.ca_pem,
        "caBundle unchanged by a serving certificate rotation"
    );
    assert_ne!(a2.cert_pem, a.cert_pem);
    assert_ne!(a2.key_pem, a.key_pem);
    let rotated = secrets.get(SECRET).await.expect("get");
    assert_ne!(rotated.metadata.resource_version, version);
    assert_eq!(data(&rotated, "tls.crt"), a2.cert_pem);

    // Files for the TLS server: written, loadable, rewritten only on change.
    let dir = cp.dir().join("bootstrap-race-certs");
    let boot = CertBootstrap::new(ns, SECRET, renamed.clone(), &dir);
    let synced = boot.sync(&client).await.expect("sync");
    assert_eq!(synced, a2);
    assert_eq!(
        std::fs::read_to_string(boot.cert_file()).expect("tls.crt"),
        a2.cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).expect("ca.crt"),
        a2.ca_pem
    );
    let store = CertStore::load(boot.cert_file(), boot.key_file()).expect("the server loads them");
    // Another replica rotates; this one's next sync rewrites its files and the server reloads.
    let third = ensure_tls_secret(&other, ns, SECRET, &sans)
        .await
        .expect("rotate back");
    assert_ne!(third.cert_pem, a2.cert_pem);
    let boot = CertBootstrap::new(ns, SECRET, sans.clone(), &dir);
    boot.sync(&client).await.expect("sync after a rotation elsewhere");
    assert_eq!(
        std::fs::read_to_string(boot.cert_file()).expect("tls.crt"),
        third.cert_pem
    );
    assert!(store.reload().expect("reload"), "the new pair is served");

    secrets
        .delete(SECRET, &DeleteParams::default())
        .await
        .expect("delete Secret");
}

fn client_config() -> WebhookClientConfig {
    WebhookClientConfig {
        url: Some("https://127.0.0.1:9/never".into()),
        ca_bundle: None,
        service: None,
    }
}

/// Matches no namespace, so the apiserver never calls these webhooks.
fn nothing() -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some([("portico.dev/never".to_owned(), "true".to_owned())].into()),
        match_expressions: None,
    })
}

#[tokio::test]
async fn ca_bundle_is_patched_onto_existing_configurations() {
    let ns = "bootstrap-cabundle";
    let Some((cp, client)) = setup(ns).await else {
        return;
    };
    let (vname, mname) = ("portico-test-bootstrap-v", "portico-test-bootstrap-m");
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let vhook = |name: &str| ValidatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(),
        side_effects: "None".into(),
        failure_policy: Some("Ignore".into()),
        namespace_selector: nothing(),
        timeout_seconds: Some(3),
        ..ValidatingWebhook::default()
    };
    let v = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(vname.into()),
            labels: Some([("keep".to_owned(), "me".to_owned())].into()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![vhook("ports.portico.dev"), vhook("other.portico.dev")]),
    };
    let m = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(mname.into()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "allocate.portico.dev".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(),
            side_effects: "None".into(),
            failure_policy: Some("Ignore".into()),
            namespace_selector: nothing(),
            ..MutatingWebhook::default()
        }]),
    };
    // Left over from an interrupted run?
    let _ = validating.delete(vname, &DeleteParams::default()).await;
    let _ = mutating.delete(mname, &DeleteParams::default()).await;
    validating
        .create(&PostParams::default(), &v)
        .await
        .expect("create validating");
    mutating
        .create(&PostParams::default(), &m)
        .await
        .expect("create mutating");

    let material = ensure_tls_secret(&client, ns, SECRET, &service_sans("portico-webhook", ns))
        .await
        .expect("ensure Secret");
    let changed = patch_ca_bundle(&client, Some(vname), Some(mname), &material.ca_pem)
        .await
        .expect("patch caBundle");
    assert_eq!(changed, 3, "two validating webhooks and one mutating");

    let want = Some(ByteString(material.ca_pem.clone().into_bytes()));
    let v = validating.get(vname).await.expect("get validating");
    let hooks = v.webhooks.expect("webhooks");
    assert_eq!(hooks.len(), 2);
    for h in &hooks {
        assert_eq!(h.client_config.ca_bundle, want, "{}", h.name);
        assert_eq!(h.client_config.url.as_deref(), Some("https://127.0.0.1:9/never"));
        assert_eq!(h.failure_policy.as_deref(), Some("Ignore"));
    }
    assert_eq!(hooks[0].name, "ports.portico.dev", "order kept");
    assert_eq!(hooks[0].timeout_seconds, Some(3));
    assert_eq!(
        v.metadata.labels.and_then(|l| l.get("keep").cloned()).as_deref(),
        Some("me")
    );
    let m = mutating.get(mname).await.expect("get mutating");
    assert_eq!(m.webhooks.expect("webhooks")[0].client_config.ca_bundle, want);

    // Already in place: nothing to do. A configuration that does not exist is skipped.
    let again = patch_ca_bundle(&client, Some(vname), Some(mname), &material.ca_pem)
        .await
        .expect("patch again");
    assert_eq!(again, 0);
    let missing = patch_ca_bundle(&client, Some("portico-test-absent"), None, &material.ca_pem)
        .await
        .expect("a missing configuration is not an error");
    assert_eq!(missing, 0);

    // A reset caBundle (e.g. a re-install) is restored by the next sync.
    let mut v = validating.get(vname).await.expect("get");
    v.webhooks.as_mut().expect("webhooks")[1].client_config.ca_bundle = None;
    validating
        .replace(vname, &PostParams::default(), &v)
        .await
        .expect("reset");
    let mut boot = CertBootstrap::new(
        ns,
        SECRET,
        service_sans("portico-webhook", ns),
        cp.dir().join("bootstrap-cabundle"),
    );
    boot.validating_webhook = Some(vname.into());
    boot.mutating_webhook = Some(mname.into());
    boot.sync(&client).await.expect("sync");
    let v = validating.get(vname).await.expect("get");
    assert!(
        v.webhooks
            .expect("webhooks")
            .iter()
            .all(|h| h.client_config.ca_bundle == want)
    );

    validating
        .delete(vname, &DeleteParams::default())
        .await
        .expect("delete validating");
    mutating
        .delete(mname, &DeleteParams::default())
        .await
        .expect("delete mutating");
}
