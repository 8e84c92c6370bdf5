//! Credentials of local API clients, kept in `clients.toml` beside the node's
//! configuration. Secrets are stored only as SHA-256 hashes; a credential is
//! shown once, when `mim4-node client add` creates it.
//!
//! The file is written by the command line while the node runs, so the node
//! re-reads it whenever its modification time changes: a revocation takes
//! effect on the next call, without a restart.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::core::ids::OperatorId;
use crate::limits;

/// Prefix of every credential, so a leaked one is recognisable in logs and scanners.
pub const CREDENTIAL_PREFIX: &str = "mim4:";

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientRole {
    /// A city service: requests data and sends messages as its own service id.
    Service,
    /// A citizen app backend: acts only for the citizen it authenticated.
    CitizenApp,
    /// An administrator of the node.
    Admin,
}

impl ClientRole {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Service => "service",
            ClientRole::CitizenApp => "citizen-app",
            ClientRole::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "service" => Some(ClientRole::Service),
            "citizen-app" => Some(ClientRole::CitizenApp),
            "admin" => Some(ClientRole::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for ClientRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One client as stored in `clients.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEntry {
    /// Client id (same rules as operator ids).
    pub id: String,
    /// Role.
    pub role: ClientRole,
    /// For services: the service id it acts as (`fi.helsinki/early-education`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// Revoked clients are refused.
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientsFile {
    #[serde(default, rename = "client")]
    clients: Vec<ClientEntry>,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Client id.
    pub id: String,
    /// Role.
    pub role: ClientRole,
    /// Service id, for services.
    pub service_id: Option<String>,
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `authorization` header.
    #[error("no credential: send `authorization: Bearer mim4:<client>:<secret>` (create one with `mim4-node client add`)")]
    Missing,
    /// Not of the credential form.
    #[error("malformed credential: expected `mim4:<client>:<secret>`")]
    Malformed,
    /// Unknown client or wrong secret (not distinguished, to avoid an oracle).
    #[error("credential not recognised (unknown client or wrong secret)")]
    Invalid,
    /// The client was revoked.
    #[error("client {0} has been revoked")]
    Revoked(String),
    /// The clients file cannot be read.
    #[error("cannot read the clients file: {0}")]
    File(String),
}

/// Errors of the `client` commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// The file cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Invalid client id.
    #[error("client id {0:?}: must start with a-z and contain only a-z, 0-9, '.', '-', '_' (at most 64)")]
    BadId(String),
    /// Client id taken.
    #[error("client {0} exists already")]
    Exists(String),
    /// No such client.
    #[error("no client {0}")]
    NotFound(String),
    /// Too many clients.
    #[error("the clients file holds the maximum of {0} clients")]
    Full(usize),
}

type FileStamp = (Option<SystemTime>, u64, u64);

/// The credential table, reloaded when the file changes.
#[derive(Debug)]
pub struct Clients {
    path: PathBuf,
    /// The file's identity when last read (mtime, inode, length) and its clients.
    cache: Mutex<(Option<FileStamp>, BTreeMap<String, ClientEntry>)>,
}

impl Clients {
    /// A table backed by `path` (which may not exist yet: then nobody is let in).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new((None, BTreeMap::new())),
        }
    }

    /// Checks a bearer credential.
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Caller, AuthError> {
        let credential = credential.ok_or(AuthError::Missing)?;
        let (client_id, secret) = parse_credential(credential).ok_or(AuthError::Malformed)?;
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| AuthError::File("credential cache poisoned".into()))?;
        // Every write replaces the file by a rename, so the inode changes even
        // when the modification time does not (coarse file-system clocks).
        let modified = fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().ok(), m.ino(), m.len()));
        if modified != cache.0 || modified.is_none() {
            let file = read_file(&self.path).map_err(|e| AuthError::File(e.to_string()))?;
            cache.1 = file
                .clients
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect();
            cache.0 = modified;
        }
        let Some(entry) = cache.1.get(client_id) else {
            return Err(AuthError::Invalid);
        };
        let presented = hex::encode(Sha256::digest(secret.as_bytes()));
        if !bool::from(presented.as_bytes().ct_eq(entry.secret_sha256.as_bytes())) {
            return Err(AuthError::Invalid);
        }
        if entry.revoked {
            return Err(AuthError::Revoked(entry.id.clone()));
        }
        Ok(Caller {
            id: entry.id.clone(),
            role: entry.role,
            service_id: entry.service_id.clone(),
        })
    }
}

fn parse_credential(credential: &str) -> Option<(&str, &str)> {
    let rest = credential.strip_prefix(CREDENTIAL_PREFIX)?;
    let (id, secret) = rest.rsplit_once(':')?;
    (!id.is_empty() && secret.len() == 64).then_some((id, secret))
}

fn read_file(path: &Path) -> Result<ClientsFile, ManageError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClientsFile::default()),
        Err(e) => {
            return Err(ManageError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
    };
    let file: ClientsFile = toml::from_str(&text).map_err(|e| ManageError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if file.clients.len() > limits::API_CLIENTS_MAX {
        return Err(ManageError::Full(limits::API_CLIENTS_MAX));
    }
    Ok(file)
}

fn write_file(path: &Path, file: &ClientsFile) -> Result<(), ManageError> {
    let err = |reason: String| ManageError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = format!(
        "# Local API clients of this MIM4 node. Managed by `mim4-node client add/list/revoke`.\n\
         # Secrets are stored as SHA-256 hashes only.\n\n{}",
        toml::to_string(file).map_err(|e| err(e.to_string()))?
    );
    // Write a temporary file and rename it, so the node never reads half a file.
    let tmp = path.with_extension("toml.tmp");
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(e.to_string()))?;
    out.write_all(text.as_bytes())
        .map_err(|e| err(e.to_string()))?;
    out.sync_all().map_err(|e| err(e.to_string()))?;
    fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Adds a client and returns its credential (shown once, never stored).
pub fn add(
    path: &Path,
    id: &str,
    role: ClientRole,
    service_id: Option<String>,
    secret: [u8; 32],
    now_ms: u64,
) -> Result<String, ManageError> {
    if OperatorId::new(id).is_err() {
        return Err(ManageError::BadId(id.to_owned()));
    }
    let mut file = read_file(path)?;
    if file.clients.iter().any(|c| c.id == id) {
        return Err(ManageError::Exists(id.to_owned()));
    }
    if file.clients.len() >= limits::API_CLIENTS_MAX {
        return Err(ManageError::Full(limits::API_CLIENTS_MAX));
    }
    let secret_hex = hex::encode(secret);
    file.clients.push(ClientEntry {
        id: id.to_owned(),
        role,
        service_id,
        secret_sha256: hex::encode(Sha256::digest(secret_hex.as_bytes())),
        created_at_ms: now_ms,
        revoked: false,
    });
    write_file(path, &file)?;
    Ok(format!("{CREDENTIAL_PREFIX}{id}:{secret_hex}"))
}

/// Lists the clients.
pub fn list(path: &Path) -> Result<Vec<ClientEntry>, ManageError> {
    Ok(read_file(path)?.clients)
}

/// Revokes a client.
pub fn revoke(path: &Path, id: &str) -> Result<(), ManageError> {
    let mut file = read_file(path)?;
    let entry = file
        .clients
        .iter_mut()
        .find(|c| c.id == id)
        .ok_or_else(|| ManageError::NotFound(id.to_owned()))?;
    entry.revoked = true;
    write_file(path, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.toml");
        let clients = Clients::new(path.clone());
        assert_eq!(clients.authenticate(None), Err(AuthError::Missing));
        let credential = add(&path, "edu", ClientRole::Service, None, [7; 32], 1).unwrap();
        let caller = clients.authenticate(Some(&credential)).unwrap();
        assert_eq!(caller.role, ClientRole::Service);
        assert_eq!(
            clients.authenticate(Some("garbage")),
            Err(AuthError::Malformed)
        );
        let wrong = format!("{CREDENTIAL_PREFIX}edu:{}", "0".repeat(64));
        assert_eq!(clients.authenticate(Some(&wrong)), Err(AuthError::Invalid));
        assert!(matches!(
            add(&path, "edu", ClientRole::Admin, None, [8; 32], 1),
            Err(ManageError::Exists(_))
        ));
        revoke(&path, "edu").unwrap();
        assert_eq!(
            clients.authenticate(Some(&credential)),
            Err(AuthError::Revoked("edu".into()))
        );
        assert_eq!(list(&path).unwrap().len(), 1);
    }
}
