//! The key file of an SQLite database: without `PARLEY_SECRET_KEY`, the key that encrypts the
//! database's secrets is generated once and kept beside the database file (`parley.key` next
//! to `parley.db`), readable by its owner only.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    str::FromStr as _,
};

use anyhow::Context as _;
use sea_orm::sqlx::sqlite::SqliteConnectOptions;

use super::SecretKey;

/// The key file of an SQLite database URL: the database file's name with the extension `key`
/// (`/data/parley.db` → `/data/parley.key`). `None` for an in-memory database.
pub fn path_for(sqlite_url: &str) -> Option<PathBuf> {
    let rest = sqlite_url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = database.is_empty()
        || database == ":memory:"
        || params.split('&').any(|p| p == "mode=memory");
    if in_memory {
        return None;
    }
    // The file name as sqlx reads it (percent-decoding and all).
    let options = SqliteConnectOptions::from_str(sqlite_url).ok()?;
    let db_file = options.get_filename();
    let mut key_file = db_file.with_extension("key");
    if key_file == db_file {
        key_file = PathBuf::from(format!("{}.key", db_file.display()));
    }
    Some(key_file)
}

/// The key in the file at `path`, or `None` if there is no such file. The error never shows
/// the file's content.
pub fn read(path: &Path) -> anyhow::Result<Option<SecretKey>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the key file {}", path.display()));
        }
    };
    warn_if_readable_by_others(path);
    SecretKey::parse(&text)
        .map(Some)
        .map_err(|reason| anyhow::anyhow!("the key file {} is not valid: {reason}", path.display()))
}

/// Creates the key file at `path` with a new key, readable by its owner only, and returns the
/// key. The file appears at once, whole: it is written under a temporary name and then linked
/// into place, which fails if the file exists; if another process created it first, its key
/// is returned.
pub fn create(path: &Path) -> anyhow::Result<SecretKey> {
    let key = SecretKey::generate();
    let contents = format!("{}\n", key.to_base64());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        uuid::Uuid::new_v4().simple()
    ));
    let cannot = || format!("cannot create the key file {}", path.display());
    write_new(&tmp, &contents).with_context(cannot)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another process won the race: use its key.
            return read(path)?.with_context(cannot);
        }
        // A file system without hard links: create the file in place.
        Err(_) => match write_new(path, &contents) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return read(path)?.with_context(cannot);
            }
            Err(e) => return Err(e).with_context(cannot),
        },
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    tracing::info!(
        path = %path.display(),
        "generated the key that encrypts this database's secrets; back it up with the database"
    );
    Ok(key)
}

/// Writes a new file (never an existing one), owner-only, and flushes it to disk.
fn write_new(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "the key file can be read by other users; restrict it with chmod 600"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_sits_beside_the_database_file() {
        assert_eq!(
            path_for("sqlite://parley.db?mode=rwc"),
            Some(PathBuf::from("parley.key"))
        );
        assert_eq!(
            path_for("sqlite:///var/lib/parley/data.sqlite?mode=rwc"),
            Some(PathBuf::from("/var/lib/parley/data.key"))
        );
        assert_eq!(path_for("sqlite:parley"), Some(PathBuf::from("parley.key")));
        assert_eq!(
            path_for("sqlite:///srv/x.key"),
            Some(PathBuf::from("/srv/x.key.key"))
        );
        assert_eq!(path_for("sqlite::memory:"), None);
        assert_eq!(path_for("sqlite://?mode=memory"), None);
    }

    #[test]
    fn a_key_file_is_created_once_owner_only_and_read_back() {
        let dir = std::env::temp_dir().join(format!("parley-key-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("parley.key");
        assert!(read(&path).expect("no file is fine").is_none());
        let key = create(&path).expect("created");
        assert_eq!(read(&path).expect("read").as_ref(), Some(&key));
        // A second creation does not replace it.
        assert_eq!(create(&path).expect("second"), key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        std::fs::write(&path, "not a key").expect("overwrite");
        let err = read(&path).expect_err("invalid").to_string();
        assert!(!err.contains("not a key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
