//! The director's certificate authority: one ECDSA P-256 CA per director,
//! made at its first start and kept in its database. It issues the
//! director's own TLS certificate and, at enrolment, each node's
//! certificate for a key the node made and keeps (from its CSR, whose
//! requested names are ignored: the name and role come from the enrolment
//! token). Revocation is a CRL the TLS layer checks at every handshake.

use baton_wire::Role;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use sha2::Digest;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate authority: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, PkiError>;

/// The CA: its certificate and signing key.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate issued by the CA.
pub struct Issued {
    pub cert_pem: String,
    /// Hex.
    pub serial: String,
    /// SHA-256 of the certificate (DER), hex: how the director recognises
    /// the certificate a connection presents.
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// SHA-256 of DER bytes, hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

fn random_serial() -> (SerialNumber, String) {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the system's random source");
    // Positive and 16 bytes: the top bit clear.
    b[0] &= 0x7f;
    b[0] |= 0x01;
    (SerialNumber::from_slice(&b), hex::encode(b))
}

fn at(unix_s: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix_s).map_err(|e| PkiError::Invalid(e.to_string()))
}

/// The name a node's certificate carries: `urn:baton:<role>:<name>`.
pub fn node_uri(role: Role, name: &str) -> String {
    format!("urn:baton:{}:{name}", role.as_str())
}

impl Ca {
    /// Makes a new CA named after the director, valid for 20 years.
    pub fn create(director: &str, now: i64) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(
            DnType::CommonName,
            format!("Baton director CA ({director})"),
        );
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = at(now - 3600)?;
        p.not_after = at(now + 20 * 365 * 86400)?;
        p.serial_number = Some(random_serial().0);
        let cert = p.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// The CA as stored: its certificate and key, PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        {
            // The key must be the certificate's: a mismatch would make every
            // certificate and CRL it signs fail to verify.
            use rustls::pki_types::PrivateKeyDer;
            use rustls::pki_types::pem::PemObject;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| PkiError::Invalid(format!("CA key: {e}")))?;
            rustls::sign::CertifiedKey::from_der(
                vec![rustls_pki_types_der(cert_pem)?.into()],
                key,
                &rustls::crypto::ring::default_provider(),
            )
            .map_err(|e| PkiError::Invalid(format!("CA key and certificate: {e}")))?;
        }
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
        })
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> Result<Vec<u8>> {
        rustls_pki_types_der(&self.cert_pem)
    }

    /// SHA-256 of the CA certificate: what enrolment tokens carry.
    pub fn fingerprint(&self) -> Result<String> {
        Ok(fingerprint(&self.cert_der()?))
    }

    /// A certificate for a node, for the key of its CSR (PEM, its
    /// signature checked). Only the key is taken from the CSR: the subject,
    /// names, usages and validity are the director's.
    pub fn issue_node(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        now: i64,
        validity_s: i64,
    ) -> Result<Issued> {
        if !baton_wire::valid_node_name(name) {
            return Err(PkiError::Invalid(format!(
                "{name:?} is not a valid node name"
            )));
        }
        let csr = check_csr(csr_pem)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        let uri = node_uri(role, name)
            .try_into()
            .map_err(|_| PkiError::Invalid("node name".into()))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        if role == Role::MediaAgent {
            // A media agent also serves agents, under a host name in a
            // namespace of its own (never a name of the director).
            let dns = baton_wire::media_host(name)
                .try_into()
                .map_err(|_| PkiError::Invalid(format!("media agent name {name:?}")))?;
            p.subject_alt_names.push(SanType::DnsName(dns));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if role == Role::MediaAgent {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        p.use_authority_key_identifier_extension = true;
        p.not_before = at(now - 300)?;
        let not_after = now
            .checked_add(validity_s)
            .ok_or_else(|| PkiError::Invalid("validity".into()))?;
        p.not_after = at(not_after)?;
        let (serial, serial_hex) = random_serial();
        p.serial_number = Some(serial);
        let cert = p.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial_hex,
            fingerprint: fingerprint(cert.der()),
            not_after,
        })
    }

    /// The director's own server certificate (and its new key, PEM) for
    /// these host names and addresses.
    pub fn issue_server(
        &self,
        hosts: &[String],
        now: i64,
        validity_s: i64,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "Baton director");
        for h in hosts {
            match h.parse::<std::net::IpAddr>() {
                Ok(ip) => p.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => p.subject_alt_names.push(SanType::DnsName(
                    h.as_str()
                        .try_into()
                        .map_err(|_| PkiError::Invalid(format!("host name {h:?}")))?,
                )),
            }
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p.not_before = at(now - 300)?;
        p.not_after = at(now + validity_s)?;
        p.serial_number = Some(random_serial().0);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A CRL listing these (serial hex, revocation time) pairs, DER.
    pub fn crl(&self, revoked: &[(String, i64)], number: u64, now: i64) -> Result<Vec<u8>> {
        let mut certs = Vec::new();
        for (serial, when) in revoked {
            let bytes =
                hex::decode(serial).map_err(|_| PkiError::Invalid(format!("serial {serial:?}")))?;
            certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: at(*when)?,
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: at(now - 60)?,
            next_update: at(now + 365 * 86400)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

/// A certificate signing request, parsed and its signature checked.
pub fn check_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::Invalid(format!("certificate signing request: {e}")))
}

/// The DER of the first certificate in `pem`.
fn rustls_pki_types_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Invalid(format!("certificate PEM: {e}")))
}

/// A new key and a CSR for it (PEM both), as a node makes at enrolment.
pub fn node_key_and_csr(name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    let csr = p.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_takes_only_the_key_from_its_request() {
        let ca = Ca::create("d1", 1_700_000_000).unwrap();
        let (_key, csr) = node_key_and_csr("evil-name-asked-for").unwrap();
        let issued = ca
            .issue_node(&csr, Role::Agent, "web-1", 1_700_000_000, 3600)
            .unwrap();
        assert_eq!(issued.not_after, 1_700_003_600);
        assert_eq!(issued.serial.len(), 32);
        let der = rustls_pki_types_der(&issued.cert_pem).unwrap();
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("web-1") && !text.contains("evil-name"));
        assert!(text.contains("urn:baton:agent:web-1"));
        // Reloaded from its PEM, the CA signs the same way; with another
        // CA's key it is refused.
        let again = Ca::load(&ca.cert_pem, &ca.key_pem()).unwrap();
        let other = Ca::create("d2", 1_700_000_000).unwrap();
        assert!(Ca::load(&ca.cert_pem, &other.key_pem()).is_err());
        assert_eq!(again.fingerprint().unwrap(), ca.fingerprint().unwrap());
        again
            .issue_node(&csr, Role::MediaAgent, "ma-1", 1_700_000_000, 60)
            .unwrap();
        assert!(matches!(
            ca.issue_node(&csr, Role::Agent, "../x", 1_700_000_000, 60),
            Err(PkiError::Invalid(_))
        ));
        assert!(
            ca.issue_node("not a csr", Role::Agent, "x", 1_700_000_000, 60)
                .is_err()
        );
        let crl = ca
            .crl(&[(issued.serial.clone(), 1_700_000_100)], 2, 1_700_000_200)
            .unwrap();
        assert!(!crl.is_empty());
    }
}
