//! What the agent reads while joining and at every start: the cluster-info ConfigMap fetched
//! anonymously (a detached JWS and a kubeconfig, `keel_agent::join::discovery`) and its own
//! `node.kubeconfig` (`keel_agent::join::credentials::parse_kubeconfig`).

use std::collections::BTreeMap;
use std::path::Path;

use keel_agent::config::{BootstrapToken, Pin};
use keel_agent::join::credentials;
use keel_agent::join::discovery::{self, DiscoveryError};

/// The token the discovery body verifies with: the fuzzer does not know its secret, as an attacker
/// serving cluster-info does not.
const TOKEN: &str = "abcdef.0123456789abcdef";
const OTHER_TOKEN: &str = "abcdef.fedcba9876543210";

/// Input: the detached JWS on the first line, the kubeconfig after it, as in cluster-info's
/// `jws-kubeconfig-<id>` and `kubeconfig` keys.
pub fn discovery(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (jws, kubeconfig) = text.split_once('\n').unwrap_or((text, ""));
    let (Ok(token), Ok(other)) = (
        BootstrapToken::parse(TOKEN),
        BootstrapToken::parse(OTHER_TOKEN),
    ) else {
        panic!("the body's own tokens do not parse");
    };

    // The ConfigMap as an attacker serves it: only a signature made with the secret may pass.
    let served = BTreeMap::from([
        ("kubeconfig".to_string(), kubeconfig.to_string()),
        (format!("jws-kubeconfig-{}", token.id), jws.to_string()),
    ]);
    let pins = pins_of(kubeconfig);
    let forged = discovery::verify_cluster_info(&served, &token, &pins);
    let genuine = discovery::sign_jws(kubeconfig.as_bytes(), &token);
    if discovery::verify_jws(jws, kubeconfig.as_bytes(), &token).is_ok() {
        // Only the one signature verifies; `trim` because the stored value may end in a newline.
        assert_eq!(jws.trim(), genuine, "a second signature verified");
    } else {
        assert!(
            forged.is_err(),
            "cluster-info verified without a valid signature"
        );
    }

    // Signed with the token: the signature step passes, and the rest depends on the kubeconfig only.
    assert!(discovery::verify_jws(&genuine, kubeconfig.as_bytes(), &token).is_ok());
    assert!(matches!(
        discovery::verify_jws(&genuine, kubeconfig.as_bytes(), &other),
        Err(DiscoveryError::SignatureMismatch { .. })
    ));
    let signed = BTreeMap::from([
        ("kubeconfig".to_string(), kubeconfig.to_string()),
        (format!("jws-kubeconfig-{}", token.id), genuine),
    ]);
    match discovery::verify_cluster_info(&signed, &token, &pins) {
        Ok(v) => {
            let info = discovery::parse_cluster_info(kubeconfig);
            assert_eq!(info.ok().as_ref(), Some(&v.info));
            assert!(v.info.ca_certs.contains(&v.ca_der));
            let pin = Pin::of_cert(&v.ca_der).ok();
            assert!(pin.is_some_and(|p| pins.contains(&p)), "CA is not pinned");
            assert!(discovery::confirm_second_fetch(&v, &signed).is_ok());
            let _ = v.ca_pem();
        }
        Err(e) => assert!(
            !matches!(
                e,
                DiscoveryError::MalformedJws { .. }
                    | DiscoveryError::SignatureMismatch { .. }
                    | DiscoveryError::NotSignedForToken { .. }
                    | DiscoveryError::NoKubeconfig
            ),
            "a genuine signature failed: {e}"
        ),
    }
}

/// The pin of the kubeconfig's last CA certificate that parses, and one that matches nothing: the
/// fuzzer reaches both a match and a mismatch.
fn pins_of(kubeconfig: &str) -> Vec<Pin> {
    let mut pins = vec![Pin([0x5a; 32])];
    if let Ok(info) = discovery::parse_cluster_info(kubeconfig) {
        if let Some(p) = info
            .ca_certs
            .iter()
            .rev()
            .find_map(|c| Pin::of_cert(c).ok())
        {
            pins.push(p);
        }
    }
    pins
}

/// `node.kubeconfig` as the agent reads it back at every start; what parses must survive being
/// written again (`render_kubeconfig`) and read back.
pub fn kubeconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("node.kubeconfig");
    let Ok(creds) = credentials::parse_kubeconfig(path, text) else {
        return;
    };
    let rendered = credentials::render_kubeconfig(
        &creds.server,
        &creds.ca_pem,
        &format!("system:node:{}", creds.cert.common_name),
        &creds.cert_pem,
        &creds.key_pem,
    );
    match credentials::parse_kubeconfig(path, &rendered) {
        Ok(again) => assert_eq!(again, creds, "round trip through render_kubeconfig"),
        Err(e) => panic!("render_kubeconfig wrote what parse_kubeconfig refuses: {e}\n{rendered}"),
    }
}
