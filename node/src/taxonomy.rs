//! The built-in taxonomy of AI risks, from the seed document's three groups.
//!
//! Operators extend it with categories kept in the shared document (see
//! `Document::add_category`); the built-in ones cannot be redefined. No IO.

use serde::{Deserialize, Serialize};

/// A risk category: a stable key, its group and a readable title.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub key: String,
    pub group: String,
    pub title: String,
    /// True for the seed's categories, false for ones operators added.
    pub builtin: bool,
}

/// The three groups of the seed's taxonomy, in the order it lists them.
pub const GROUPS: [(&str, &str); 3] = [
    ("technological-safety", "Technological safety"),
    ("application-security", "Application security"),
    ("beneficial-use", "Beneficial use"),
];

/// (key, group, title) of every built-in category.
const BUILTIN: [(&str, &str, &str); 12] = [
    (
        "algorithmic-bias",
        "technological-safety",
        "Algorithmic bias",
    ),
    (
        "model-vulnerabilities",
        "technological-safety",
        "Model vulnerabilities",
    ),
    (
        "rapid-iteration",
        "technological-safety",
        "Endogenous risks of rapid model iteration",
    ),
    (
        "reliability",
        "technological-safety",
        "Reliability, controllability and explainability",
    ),
    (
        "development-ethics",
        "technological-safety",
        "Non-discrimination and ethics in development and training",
    ),
    (
        "superintelligence-control",
        "technological-safety",
        "Control of generative and super-intelligent AI",
    ),
    (
        "malicious-use",
        "application-security",
        "Malicious use by non-state actors",
    ),
    (
        "social-order",
        "application-security",
        "Risks to social order (automation, unemployment, workforce retraining)",
    ),
    (
        "international-interaction",
        "application-security",
        "International interaction (militarisation, incompatible governance, regulatory gaps, spillover)",
    ),
    ("climate-governance", "beneficial-use", "Climate governance"),
    (
        "transnational-crime",
        "beneficial-use",
        "Drug trafficking and transnational crime",
    ),
    (
        "technology-gap",
        "beneficial-use",
        "Bridging the technology gap between countries",
    ),
];

/// The built-in categories in the seed's order.
pub fn builtin() -> Vec<Category> {
    BUILTIN
        .iter()
        .map(|(key, group, title)| Category {
            key: (*key).into(),
            group: (*group).into(),
            title: (*title).into(),
            builtin: true,
        })
        .collect()
}

/// The title of a group key, or the key itself for an unknown group.
pub fn group_title(group: &str) -> &str {
    GROUPS
        .iter()
        .find(|(key, _)| *key == group)
        .map_or(group, |(_, title)| title)
}

/// Whether `key` is usable as a category or group key: 2 to 48 characters of
/// lowercase ASCII letters, digits and hyphens, starting with a letter.
pub fn valid_key(key: &str) -> bool {
    (2..=48).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_keys_are_valid_unique_and_grouped() {
        let cats = builtin();
        let mut keys: Vec<_> = cats.iter().map(|c| c.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), cats.len());
        for c in &cats {
            assert!(valid_key(&c.key), "{}", c.key);
            assert!(GROUPS.iter().any(|(g, _)| *g == c.group), "{}", c.group);
        }
    }
}
