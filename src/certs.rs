//! Throw-away PKI for the demo, the simulator and the tests: a fresh CA per
//! run and leaf certificates it signs. Nothing here is for production, and no
//! private key is ever committed to the repository.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

pub struct DevCa {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate (PEM) and its private key (PKCS#8 PEM).
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    pub fn new(common_name: &str) -> Result<DevCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "portcullis development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for the given DNS names and IP addresses.
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf, rcgen::Error> {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(90);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl DevCa {
    /// A client certificate (mTLS) with the given SAN DNS names.
    pub fn client(&self, names: &[&str]) -> Result<Leaf, rcgen::Error> {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(30);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Names on the simulator's certificate: loopback, and the real Schwab host
/// so the DNS-override way of pointing clients works in the demo too.
pub const SIM_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1", "api.schwabapi.com"];
/// Names on the demo proxy's certificate.
pub const PROXY_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1", "portcullis.local"];
