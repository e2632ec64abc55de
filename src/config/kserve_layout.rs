//! Where a KServe storage initializer put the model (`--model_dir`): a
//! kserve-torchserve layout, a Triton model repository, or one model's
//! directory. It only classifies the directory; `config` applies it.

use std::path::PathBuf;

use super::{ConfigError, KServeFlags};
use crate::types::excerpt;

/// How a KServe model directory is laid out.
pub(super) enum KServeLayout {
    /// kserve-torchserve's `config/config.properties` + `model-store/`.
    TorchServe { config: PathBuf, store: PathBuf },
    /// A model directory served as `--model_name`.
    ModelDir { name: String, dir: PathBuf },
    /// A Triton model repository (`<model>/config.pbtxt` per model): every
    /// model in it, by its directory's name.
    Repository { store: PathBuf },
}

impl KServeLayout {
    pub(super) fn of(flags: &KServeFlags) -> Option<KServeLayout> {
        let dir = flags.model_dir()?;
        let (config, store) = (
            dir.join("config/config.properties"),
            dir.join("model-store"),
        );
        let holds_triton_models = std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().join("config.pbtxt").is_file())
        });
        Some(if config.is_file() && store.is_dir() {
            KServeLayout::TorchServe { config, store }
        } else if holds_triton_models && !dir.join("config.pbtxt").is_file() {
            KServeLayout::Repository { store: dir }
        } else {
            KServeLayout::ModelDir {
                name: flags.model_name.clone().unwrap_or_else(|| "model".into()),
                dir,
            }
        })
    }

    /// Refuses a `ModelDir` that `load_models`, a list split at commas,
    /// spaces and `=`, would not give back whole.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let KServeLayout::ModelDir { name, dir } = self else {
            return Ok(());
        };
        let dir = dir.display().to_string();
        for (flag, value, separators) in [
            ("--model_name", name.as_str(), &[',', ' ', '='][..]),
            ("--model_dir", dir.as_str(), &[',', ' '][..]),
        ] {
            if value.contains(separators) {
                return Err(ConfigError::Invalid(format!(
                    "{flag} '{}' holds a comma, a space or '='; ortserve takes a model's name \
                     and directory without them",
                    excerpt(value)
                )));
            }
        }
        Ok(())
    }
}
