//! Finding the config file: the environment variables and TFRA's `redis_config_abs_dir`.

use std::path::{Path, PathBuf};

use super::{CONFIG_FILE_NAME, DEFAULT_CONFIG_ENV};
use crate::error::{Error, Result};

/// Finds the config file, in the order TFRA's design note asks for:
///
/// 1. the environment variable named `env_var_name` (`TFRA_REDIS_CONFIG_PATH` when `None` or empty),
/// 2. `TFRA_REDIS_CONFIG_PATH`,
/// 3. `abs_dir`, TFRA's `redis_config_abs_dir`.
///
/// Each location may be a file, used as is, or a directory, meaning `<dir>/redis_config.json`
/// (TFRA's docs show both forms for `redis_config_abs_dir`). A location is skipped when the
/// variable is unset or the file is missing or empty; the next one is tried. This is the design
/// note's rule; TFRA's code failed instead when a set variable named a missing file.
///
/// If nothing fits, the [`Error::ConfigPath`] lists every variable (with its value) and path tried,
/// and why each was skipped.
///
/// # Errors
///
/// [`Error::ConfigPath`] when no candidate names an existing file, listing each candidate and why
/// it was skipped.
pub fn resolve_config_path(env_var_name: Option<&str>, abs_dir: Option<&str>) -> Result<PathBuf> {
    resolve_config_path_with(
        |name| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned()),
        env_var_name,
        abs_dir,
    )
}

/// [`resolve_config_path`] with the environment read through `env` (name -> value), so that
/// callers and tests can supply their own.
///
/// # Errors
///
/// As [`resolve_config_path`].
pub fn resolve_config_path_with(
    env: impl Fn(&str) -> Option<String>,
    env_var_name: Option<&str>,
    abs_dir: Option<&str>,
) -> Result<PathBuf> {
    let first = env_var_name
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_CONFIG_ENV);
    let mut names = vec![first];
    if first != DEFAULT_CONFIG_ENV {
        names.push(DEFAULT_CONFIG_ENV);
    }

    let mut tried = Vec::new();
    for name in names {
        match env(name) {
            None => tried.push(format!("${name} is unset")),
            Some(value) => match config_file_at(Path::new(&value)) {
                Ok(path) => return Ok(path),
                Err(why) => tried.push(format!("${name}={value:?}: {why}")),
            },
        }
    }
    match abs_dir.filter(|dir| !dir.is_empty()) {
        None => tried.push("redis_config_abs_dir is not given".to_owned()),
        Some(dir) => match config_file_at(Path::new(dir)) {
            Ok(path) => return Ok(path),
            Err(why) => tried.push(format!("redis_config_abs_dir {dir:?}: {why}")),
        },
    }
    Err(Error::ConfigPath {
        message: format!(
            "tried {}; point one of them to a non-empty JSON config file",
            tried.join("; ")
        ),
    })
}

/// The usable config file at `location` (the file itself, or `redis_config.json` in a
/// directory), or why there is none.
fn config_file_at(location: &Path) -> std::result::Result<PathBuf, String> {
    let is_dir = location.is_dir();
    let path = if is_dir {
        location.join(CONFIG_FILE_NAME)
    } else {
        location.to_path_buf()
    };
    match std::fs::metadata(&path) {
        // TFRA also rejected 0-byte files here, before parsing.
        Ok(meta) if meta.is_file() && meta.len() > 0 => Ok(path),
        Ok(meta) if meta.is_file() => Err(format!("{} is empty", path.display())),
        Ok(_) => Err(format!("{} is not a regular file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_dir => {
            Err(format!("the directory has no {CONFIG_FILE_NAME}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no such file".to_owned()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisConfig;
    use crate::config::tests::{FIXTURE_CONFIG, parse_ok};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "tfra-redis-config-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    const MODEL_ENV: &str = "model1_tfra_redis_config_path";

    #[test]
    fn named_variable_comes_first() {
        let dir = TempDir::new();
        let mine = dir.file("mine.json", "{}");
        let shared = dir.file("shared.json", "{}");
        let abs = dir.file("abs.json", "{}");
        let env = fake_env(&[
            (MODEL_ENV, mine.to_str().unwrap()),
            (DEFAULT_CONFIG_ENV, shared.to_str().unwrap()),
        ]);
        let found =
            resolve_config_path_with(env, Some(MODEL_ENV), Some(abs.to_str().unwrap())).unwrap();
        assert_eq!(found, mine);
    }

    #[test]
    fn unset_variable_falls_through_to_default_variable() {
        let dir = TempDir::new();
        let shared = dir.file("shared.json", "{}");
        let abs = dir.file("abs.json", "{}");
        let env = fake_env(&[(DEFAULT_CONFIG_ENV, shared.to_str().unwrap())]);
        let found =
            resolve_config_path_with(env, Some(MODEL_ENV), Some(abs.to_str().unwrap())).unwrap();
        assert_eq!(found, shared);
    }

    #[test]
    fn missing_or_empty_files_fall_through_to_abs_dir() {
        let dir = TempDir::new();
        let empty = dir.file("empty.json", "");
        let abs = dir.file("abs.json", "{}");
        let env = fake_env(&[
            (MODEL_ENV, &dir.path("missing.json")),
            (DEFAULT_CONFIG_ENV, empty.to_str().unwrap()),
        ]);
        let found =
            resolve_config_path_with(env, Some(MODEL_ENV), Some(abs.to_str().unwrap())).unwrap();
        assert_eq!(found, abs);
    }

    #[test]
    fn abs_dir_may_be_a_directory() {
        let dir = TempDir::new();
        let file = dir.file(CONFIG_FILE_NAME, "{}");
        // The design note writes it with a trailing slash: "/tmp/test/".
        let with_slash = format!("{}/", dir.0.display());
        let found = resolve_config_path_with(fake_env(&[]), None, Some(&with_slash)).unwrap();
        assert_eq!(found.canonicalize().unwrap(), file.canonicalize().unwrap());
    }

    #[test]
    fn variables_may_name_a_directory_too() {
        let dir = TempDir::new();
        let file = dir.file(CONFIG_FILE_NAME, "{}");
        let env = fake_env(&[(DEFAULT_CONFIG_ENV, dir.0.to_str().unwrap())]);
        assert_eq!(resolve_config_path_with(env, None, None).unwrap(), file);
    }

    #[test]
    fn empty_variable_name_means_the_default() {
        let dir = TempDir::new();
        let shared = dir.file("shared.json", "{}");
        let env = fake_env(&[(DEFAULT_CONFIG_ENV, shared.to_str().unwrap())]);
        assert_eq!(
            resolve_config_path_with(env, Some(""), None).unwrap(),
            shared
        );
    }

    #[test]
    fn nothing_found_lists_everything_tried() {
        let dir = TempDir::new();
        let missing = dir.path("missing.json");
        let env = fake_env(&[(MODEL_ENV, &missing)]);
        let err = resolve_config_path_with(env, Some(MODEL_ENV), Some(dir.0.to_str().unwrap()))
            .unwrap_err();
        assert!(matches!(err, Error::ConfigPath { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("${MODEL_ENV}={missing:?}: no such file")),
            "{text}"
        );
        assert!(text.contains("$TFRA_REDIS_CONFIG_PATH is unset"), "{text}");
        assert!(text.contains("redis_config_abs_dir"), "{text}");
        assert!(text.contains("has no redis_config.json"), "{text}");
    }

    #[test]
    fn default_variable_is_tried_once() {
        let err = resolve_config_path_with(fake_env(&[]), None, None).unwrap_err();
        let text = err.to_string();
        assert_eq!(text.matches("TFRA_REDIS_CONFIG_PATH").count(), 1, "{text}");
        assert!(text.contains("redis_config_abs_dir is not given"), "{text}");
    }

    #[test]
    fn from_path_reads_the_file() {
        let dir = TempDir::new();
        let path = dir.file("c.json", FIXTURE_CONFIG);
        let (config, _) = RedisConfig::from_path(&path).unwrap();
        assert_eq!(config, parse_ok(FIXTURE_CONFIG));

        let path = dir.file("bad.json", "{\n\"storage_slice\": }");
        match RedisConfig::from_path(&path).unwrap_err() {
            Error::ConfigSyntax {
                source_name, line, ..
            } => {
                assert_eq!(source_name, path.display().to_string());
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn from_path_rejects_empty_and_missing_files() {
        let dir = TempDir::new();
        let empty = dir.file("empty.json", " \n");
        let err = RedisConfig::from_path(&empty).unwrap_err();
        assert!(matches!(err, Error::ConfigPath { .. }), "{err:?}");
        assert!(err.to_string().contains("is empty"));
        let err = RedisConfig::from_path(&dir.0.join("missing.json")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }
}
