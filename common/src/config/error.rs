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
    #[error("{file}:{line}: unknown key `{key}`{}", suggest(.suggestion))]
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
    #[error("{file}:{line}: `{key}` is `{value}` but must be {expected}; fix the value")]
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
    #[error("{file}:{line}: `{key}` is `{value}`, which is not one of: {}{}", .choices.join(", "), suggest_value(.suggestion))]
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
    #[error("{file}:{line}: missing key `{key}`; add it")]
    MissingKey {
        /// The config's name.
        file: String,
        /// 1-based line of the mapping that lacks it.
        line: usize,
        /// The full dotted key.
        key: String,
    },
    /// `${VAR}` names an environment variable that is not set.
    #[error("{file}:{line}: `{key}` uses ${{{var}}} but {var} is not set; export it or write ${{{var}:-default}}")]
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
    /// Anything else the schema rejected, still located.
    #[error("{file}:{line}: `{key}`: {message}")]
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
        Some(l) => format!(":{l}"),
        None => String::new(),
    }
}
