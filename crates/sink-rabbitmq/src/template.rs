//! The exchange's name for a record, from a template with `${aggregatetype}`
//! and `${type}` placeholders like the topic template (the routing key is
//! rendered by the pipeline's routing; both use outbox-core's template
//! functions).

use outbox_core::{check_template, render_template};

use crate::error::ConfigError;

/// A checked template. No placeholder means one fixed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    fixed: bool,
}

impl Template {
    /// Checks that `text` uses known placeholders only; `what` names the
    /// setting in the error.
    pub fn new(what: &'static str, text: &str) -> Result<Self, ConfigError> {
        check_template(text).map_err(|source| ConfigError::Template { what, source })?;
        Ok(Template {
            text: text.to_owned(),
            fixed: !text.contains("${"),
        })
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The name when the template has no placeholder.
    pub fn fixed(&self) -> Option<&str> {
        self.fixed.then_some(self.text.as_str())
    }

    /// The name for one event.
    pub fn render(&self, aggregate_type: &str, event_type: &str) -> String {
        if self.fixed {
            return self.text.clone();
        }
        render_template(&self.text, aggregate_type, event_type)
    }
}

/// Whether RabbitMQ accepts `name` as an exchange name: at most 255 bytes of
/// letters, digits, `-`, `_`, `.` and `:` (the empty name is the default
/// exchange).
pub(crate) fn valid_exchange_name(name: &str) -> bool {
    name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let t = Template::new("exchange", "outbox.${aggregatetype}.${type}").unwrap();
        assert_eq!(t.render("order", "created"), "outbox.order.created");
        assert_eq!(t.fixed(), None);
        let t = Template::new("exchange", "outbox").unwrap();
        assert_eq!(t.fixed(), Some("outbox"));
        assert_eq!(t.render("order", "created"), "outbox");
    }

    #[test]
    fn unknown_placeholders_are_refused() {
        let err = Template::new("exchange", "x.${aggregateid}").unwrap_err();
        assert!(err.to_string().contains("${aggregateid}"), "{err}");
    }

    #[test]
    fn exchange_names() {
        assert!(valid_exchange_name("outbox"));
        assert!(valid_exchange_name("a:b-c_d.e"));
        assert!(valid_exchange_name(""));
        assert!(!valid_exchange_name("with space"));
        assert!(!valid_exchange_name("é"));
        assert!(!valid_exchange_name(&"x".repeat(256)));
    }
}
