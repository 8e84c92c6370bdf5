//! Key files: the operator's secret key on disk (hex, mode 0600).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use zeroize::Zeroizing;

use crate::core::keys::{KeyError, PublicKey, SecretKey};

/// Errors reading or writing key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists already (init never overwrites a key).
    #[error("{0} exists already; refusing to overwrite a key")]
    Exists(String),
    /// Others may read the secret key.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// The content is not a key.
    #[error("{path}: {source}")]
    BadKey {
        /// The file.
        path: String,
        /// Why.
        source: KeyError,
    },
}

/// Writes a new secret key file with mode 0600, refusing to overwrite.
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists(path.display().to_string())
            } else {
                io(e)
            }
        })?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.to_bytes().as_ref())));
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// Reads a secret key file, refusing one that group or others can read.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, Error> {
    let shown = path.display().to_string();
    let io = |source| Error::Io {
        path: shown.clone(),
        source,
    };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::TooOpen { path: shown, mode });
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
    let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|e| Error::BadKey {
        path: shown.clone(),
        source: KeyError::NotHex(e.to_string()),
    })?);
    SecretKey::from_bytes(&bytes).map_err(|source| Error::BadKey {
        path: shown,
        source,
    })
}

/// Reads a public key file (64 hex digits).
pub fn read_public_key(path: &Path) -> Result<PublicKey, Error> {
    let shown = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|source| Error::Io {
        path: shown.clone(),
        source,
    })?;
    PublicKey::from_hex(&text).map_err(|source| Error::BadKey {
        path: shown,
        source,
    })
}

/// Writes a public key file (64 hex digits).
pub fn write_public_key(path: &Path, key: &PublicKey) -> Result<(), Error> {
    fs::write(path, format!("{}\n", key.to_hex())).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.key");
        let key = SecretKey::generate(&mut rand::rngs::OsRng);
        write_secret_key(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret_key(&path).unwrap().public(), key.public());
        assert!(matches!(
            write_secret_key(&path, &key),
            Err(Error::Exists(_))
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_secret_key(&path), Err(Error::TooOpen { .. })));
    }
}
