//! Key files: the operator's secret key and the storage key on disk (hex, mode 0600).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::core::keys::{KeyError, PublicKey, SecretKey};
use crate::store::StorageKey;

/// The storage key file's name; it lives beside the operator key file.
pub const STORAGE_KEY_FILE: &str = "storage.key";

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
    /// The storage key file is missing but a database exists that needs it.
    #[error(
        "{path} is missing but the database in {data_dir} exists: restore the storage key \
         it was created with (a database from a version without encryption at rest must be \
         moved away and re-created)"
    )]
    StorageKeyMissing {
        /// The storage key file.
        path: String,
        /// The data directory.
        data_dir: String,
    },
}

/// Where the storage key of a node whose operator key is `key_file` lives: beside it.
pub fn storage_key_file(key_file: &Path) -> PathBuf {
    key_file.with_file_name(STORAGE_KEY_FILE)
}

/// Writes a new storage key file with mode 0600 (hex), refusing to overwrite.
pub fn write_storage_key(path: &Path, key: &StorageKey) -> Result<(), Error> {
    write_new_secret(path, &key.to_bytes()[..])
}

/// Reads a storage key file, refusing one that group or others can read.
pub fn read_storage_key(path: &Path) -> Result<StorageKey, Error> {
    let shown = path.display().to_string();
    let bytes = read_secret(path)?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::BadKey {
        path: shown,
        source: KeyError::NotHex(format!("{} bytes, not 32", bytes.len())),
    })?;
    let key = StorageKey::from_bytes(bytes);
    let mut bytes = bytes;
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(key)
}

/// The node's storage key: read from `path`, or created there (mode 0600)
/// when missing and `data_dir` holds no database yet (a new node, or one
/// initialised before storage keys existed). A missing key with an existing
/// database is an error: a new key would not open it.
pub fn open_storage_key(path: &Path, data_dir: &Path) -> Result<StorageKey, Error> {
    if path.exists() {
        return read_storage_key(path);
    }
    // sled 0.34 keeps its data in `DIR/db` (and `conf`, `snap.*`).
    if data_dir.join("db").exists() || data_dir.join("conf").exists() {
        return Err(Error::StorageKeyMissing {
            path: path.display().to_string(),
            data_dir: data_dir.display().to_string(),
        });
    }
    let key = StorageKey::generate();
    write_storage_key(path, &key)?;
    tracing::info!(file = %path.display(), "created the storage key (encryption at rest)");
    Ok(key)
}

/// Writes a new secret key file with mode 0600, refusing to overwrite.
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), Error> {
    write_new_secret(path, key.to_bytes().as_ref())
}

/// Writes `bytes` as hex to a new file with mode 0600, refusing to overwrite.
fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), Error> {
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
    let text = Zeroizing::new(format!("{}\n", hex::encode(bytes)));
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// Reads a secret key file, refusing one that group or others can read.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, Error> {
    let bytes = read_secret(path)?;
    SecretKey::from_bytes(&bytes).map_err(|source| Error::BadKey {
        path: path.display().to_string(),
        source,
    })
}

/// The hex content of a secret file, refusing one that group or others can read.
fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
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
    Ok(Zeroizing::new(hex::decode(text.trim()).map_err(|e| {
        Error::BadKey {
            path: shown,
            source: KeyError::NotHex(e.to_string()),
        }
    })?))
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

    /// The storage key is created beside the operator key with mode 0600 for a
    /// new database, read back, refused with mode 0644 (naming the fix), and
    /// never silently re-created for an existing database.
    #[test]
    fn storage_key_created_read_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = storage_key_file(&dir.path().join("operator.key"));
        assert_eq!(path, dir.path().join("storage.key"));
        let data = dir.path().join("data");
        let key = open_storage_key(&path, &data).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            *read_storage_key(&path).unwrap().to_bytes(),
            *key.to_bytes()
        );
        assert_eq!(
            *open_storage_key(&path, &data).unwrap().to_bytes(),
            *key.to_bytes()
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = open_storage_key(&path, &data).unwrap_err();
        assert!(matches!(err, Error::TooOpen { mode: 0o644, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_storage_key(&path),
            Err(Error::TooOpen { .. })
        ));
        fs::remove_file(&path).unwrap();
        crate::store::Store::open(&data, &key).unwrap();
        let err = open_storage_key(&path, &data).unwrap_err();
        assert!(matches!(err, Error::StorageKeyMissing { .. }), "{err}");
        assert!(!path.exists());
    }
}
