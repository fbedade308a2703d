//! Config errors: each one line, naming the file, the line, the dotted key, the bad value and the fix.

/// Why a config could not be read, parsed or accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config ({source}); check the path passed to --config")]
    Read {
        /// The path as given.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML.
    #[error("{file}:{line}:{col}: not valid YAML: {message}")]
    Syntax {
        /// The config's name (its path).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What the YAML parser objected to.
        message: String,
    },
    /// A key the schema does not have.
    #[error("{file}{}: unknown key `{key}`{}", at(.line), suggest(.suggestion))]
    UnknownKey {
        /// The config's name.
        file: String,
        /// 1-based line of the key.
        line: usize,
        /// The full dotted key, e.g. `training.learnign_rate`.
        key: String,
        /// The nearest valid key (full dotted path), if one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong type (a word where a number belongs, a list where a string belongs, ...).
    #[error("{file}{}: `{key}` is `{value}` but must be {expected}; fix the value", at(.line))]
    WrongType {
        /// The config's name.
        file: String,
        /// 1-based line of the value.
        line: usize,
        /// The full dotted key.
        key: String,
        /// The value as written.
        value: String,
        /// The expected type in words.
        expected: String,
    },
    /// A value outside a fixed set of choices.
    #[error("{file}{}: `{key}` is `{value}`, which is not one of: {}{}", at(.line), .choices.join(", "), suggest_value(.suggestion))]
    UnknownValue {
        /// The config's name.
        file: String,
        /// 1-based line of the value.
        line: usize,
        /// The full dotted key.
        key: String,
        /// The value as written.
        value: String,
        /// The nearest valid choice, if one is close.
        suggestion: Option<String>,
        /// All valid choices.
        choices: Vec<String>,
    },
    /// A required key is absent.
    #[error("{file}{}: missing key `{key}`; add it", at(.line))]
    MissingKey {
        /// The config's name.
        file: String,
        /// 1-based line of the mapping that lacks it.
        line: usize,
        /// The full dotted key.
        key: String,
    },
    /// `${VAR}` names an environment variable that is not set.
    #[error("{file}{}: `{key}` uses ${{{var}}} but {var} is not set; export it or write ${{{var}:-default}}", at(.line))]
    EnvVar {
        /// The config's name.
        file: String,
        /// 1-based line of the value.
        line: usize,
        /// The full dotted key.
        key: String,
        /// The variable's name.
        var: String,
    },
    /// A value of the right type that breaks a rule (stride larger than the window, a negative weight, ...).
    #[error("{file}{}: `{key}` is `{value}`: {fix}", at_line(.line))]
    Invalid {
        /// The config's name.
        file: String,
        /// 1-based line, when the key was written in the file (not a default).
        line: Option<usize>,
        /// The full dotted key.
        key: String,
        /// The value, as parsed.
        value: String,
        /// The rule and how to satisfy it.
        fix: String,
    },
    /// Several problems, all found in one run (each one of the other variants), in document order.
    #[error("{} problems in {file}:\n{}", .errors.len(), .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Many {
        /// The config's name.
        file: String,
        /// Each problem (never `Many` itself), two or more.
        errors: Vec<ConfigError>,
    },
    /// Anything else the schema rejected, still located.
    #[error("{file}{}: `{key}`: {message}", at(.line))]
    Other {
        /// The config's name.
        file: String,
        /// 1-based line.
        line: usize,
        /// The full dotted key.
        key: String,
        /// The complaint.
        message: String,
    },
}

impl ConfigError {
    /// One error for a list of them: the error itself when there is one, [`ConfigError::Many`] for more
    /// (nested `Many` flattened). `None` for an empty list.
    pub fn from_list(file: &str, errors: Vec<ConfigError>) -> Option<ConfigError> {
        let mut flat = Vec::new();
        for e in errors {
            match e {
                ConfigError::Many { errors, .. } => flat.extend(errors),
                e => flat.push(e),
            }
        }
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(ConfigError::Many { file: file.to_string(), errors: flat }),
        }
    }

    /// Every single problem: the list of a [`ConfigError::Many`], else the error itself.
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Many { errors, .. } => errors.iter().collect(),
            e => vec![e],
        }
    }

    /// The dotted key the error is about, where it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::WrongType { key, .. }
            | ConfigError::UnknownValue { key, .. }
            | ConfigError::MissingKey { key, .. }
            | ConfigError::EnvVar { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::Other { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } | ConfigError::Many { .. } => None,
        }
    }

    /// The error's file and line, for those that have both.
    pub(crate) fn location_mut(&mut self) -> Option<(&mut String, &mut usize)> {
        match self {
            ConfigError::UnknownKey { file, line, .. }
            | ConfigError::WrongType { file, line, .. }
            | ConfigError::UnknownValue { file, line, .. }
            | ConfigError::MissingKey { file, line, .. }
            | ConfigError::EnvVar { file, line, .. }
            | ConfigError::Syntax { file, line, .. }
            | ConfigError::Other { file, line, .. } => Some((file, line)),
            ConfigError::Invalid { file, line: Some(line), .. } => Some((file, line)),
            ConfigError::Read { .. } | ConfigError::Invalid { line: None, .. } | ConfigError::Many { .. } => None,
        }
    }
}

/// `:line`, or nothing for line 0 (a value given by `--set`, whose `file` names the argument).
fn at(line: &usize) -> String {
    if *line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

fn suggest(s: &Option<String>) -> String {
    match s {
        Some(k) => format!("; did you mean `{k}`?"),
        None => "; remove it or check the spelling against the config reference".into(),
    }
}

fn suggest_value(s: &Option<String>) -> String {
    match s {
        Some(k) => format!(" (did you mean `{k}`?)"),
        None => String::new(),
    }
}

fn at_line(line: &Option<usize>) -> String {
    match line {
        Some(l) => at(l),
        None => String::new(),
    }
}
