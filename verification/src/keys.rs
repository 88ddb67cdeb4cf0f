//! Ed25519 keys for signing ledger heads, stored as hexadecimal text files.
//!
//! `countersign keys generate --out FILE` writes the secret key (32 bytes, 64 hex digits, mode
//! 0600) to `FILE` and the public key to `FILE.pub`. A key is named by its id: the first 16 hex
//! digits of `blake3("countersign.key.v1" ‖ public key)`, recorded in every head it signs, so a
//! verifier holding several public keys (after a rotation) picks the right one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The id of a public key.
pub fn key_id(public: &VerifyingKey) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"countersign.key.v1");
    hasher.update(public.as_bytes());
    hasher.finalize().to_hex()[..16].to_owned()
}

/// A secret key that signs heads.
#[derive(Clone)]
pub struct HeadSigner {
    key: SigningKey,
    id: String,
}

impl fmt::Debug for HeadSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadSigner")
            .field("key_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl HeadSigner {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        Self::new(SigningKey::generate(&mut rand_core::OsRng))
    }

    pub fn new(key: SigningKey) -> Self {
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    /// Reads a secret key file (64 hex digits).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the signing key {}", path.display()))?;
        let bytes = parse_key_bytes(&text)
            .with_context(|| format!("{} is not a countersign signing key", path.display()))?;
        Ok(Self::new(SigningKey::from_bytes(&bytes)))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// Writes the secret key to `path` (mode 0600, refusing to overwrite) and the public key to
    /// `path.pub`; returns the public key's path.
    pub fn write(&self, path: &Path) -> anyhow::Result<PathBuf> {
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key",
                path.display()
            );
        }
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(
            &mut file,
            format!("{}\n", hex::encode(self.key.to_bytes())).as_bytes(),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        let public = public_key_path(path);
        std::fs::write(
            &public,
            format!("{}\n", hex::encode(self.public_key().as_bytes())),
        )
        .with_context(|| format!("writing {}", public.display()))?;
        Ok(public)
    }
}

/// `FILE.pub` beside a secret key `FILE`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn parse_key_bytes(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    let bytes = hex::decode(text).context("expected 64 hexadecimal digits")?;
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        anyhow::anyhow!(
            "expected 32 bytes (64 hexadecimal digits), found {}",
            bytes.len()
        )
    })
}

/// Parses a public key: 64 hex digits.
pub fn parse_public_key(text: &str) -> anyhow::Result<VerifyingKey> {
    let bytes = parse_key_bytes(text)?;
    VerifyingKey::from_bytes(&bytes).context("not a valid Ed25519 public key")
}

/// Reads a public key from a file, or takes the argument itself when it is 64 hex digits.
pub fn read_public_key(file_or_hex: &str) -> anyhow::Result<VerifyingKey> {
    let path = Path::new(file_or_hex);
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the public key {}", path.display()))?;
        return parse_public_key(&text)
            .with_context(|| format!("{} is not a countersign public key", path.display()));
    }
    parse_public_key(file_or_hex).with_context(|| {
        format!("`{file_or_hex}` is neither a public key file nor 64 hexadecimal digits")
    })
}

/// The public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, VerifyingKey>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|key| (key_id(&key), key)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks `signature` over `message` by the key `id`.
    pub fn verify(&self, id: &str, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| SignatureError::UnknownKey(id.to_owned()))?;
        let signature = Signature::from_slice(signature).map_err(|_| SignatureError::Malformed)?;
        key.verify(message, &signature)
            .map_err(|_| SignatureError::Invalid(id.to_owned()))
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signed by key {0}, which is not among the trusted public keys")]
    UnknownKey(String),
    #[error("the signature is not 64 bytes of hexadecimal")]
    Malformed,
    #[error("the signature does not verify with key {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_files_and_sign() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("head.key");
        let signer = HeadSigner::generate();
        let public = signer.write(&path).expect("written");
        assert!(signer.write(&path).is_err(), "never overwrites");
        let read = HeadSigner::read(&path).expect("read");
        assert_eq!(read.id(), signer.id());
        let ring = KeyRing::new([read_public_key(&public.display().to_string()).expect("pub")]);
        let signature = signer.sign(b"message");
        assert_eq!(
            ring.verify(signer.id(), b"message", &signature.to_bytes()),
            Ok(())
        );
        assert!(
            ring.verify(signer.id(), b"other", &signature.to_bytes())
                .is_err()
        );
        assert_eq!(
            ring.verify("0000", b"message", &signature.to_bytes()),
            Err(SignatureError::UnknownKey("0000".into()))
        );
        let hex_key = hex::encode(signer.public_key().as_bytes());
        assert!(read_public_key(&hex_key).is_ok());
        let err = read_public_key("nope").expect_err("refused");
        assert!(
            format!("{err:#}").contains("neither a public key file"),
            "{err:#}"
        );
        std::fs::write(dir.path().join("bad.key"), "zz").expect("write");
        let err = HeadSigner::read(&dir.path().join("bad.key")).expect_err("refused");
        assert!(format!("{err:#}").contains("is not a countersign signing key"));
    }
}
