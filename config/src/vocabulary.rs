//! Closed vocabularies of configuration keys (`environment`, `audit.format`...): enums whose
//! words strum derives (snake_case), parsed with an error that lists the known words.

/// Declares a vocabulary: `vocabulary! { pub enum Route ("a route") { Direct, Upstream } }`
/// derives its words with strum (snake_case: `direct`, `upstream`) and makes it parse, with an
/// error that says what was expected (`"xml" is not a format (json, squid, ecs, ocsf)`).
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash,
            strum::IntoStaticStr, strum::Display, strum::VariantNames, strum::EnumIter,
        )]
        #[strum(serialize_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every word of the vocabulary, in the order of the declaration.
            pub const WORDS: &'static [&'static str] =
                <$name as strum::VariantNames>::VARIANTS;

            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                <$name as strum::IntoEnumIterator>::iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("{s:?} is not {} ({})", $what, $name::WORDS.join(", ")))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

pub(crate) use vocabulary;

#[cfg(test)]
mod tests {
    use crate::policy::{Environment, Route};
    use crate::{AuditFormat, OnFull, PageLanguage};

    #[test]
    fn every_word_parses_back_and_unknown_words_list_the_known_ones() {
        for word in Environment::WORDS {
            assert_eq!(word.parse::<Environment>().unwrap().as_str(), *word);
        }
        assert_eq!("direct".parse::<Route>(), Ok(Route::Direct));
        assert_eq!("squid".parse::<AuditFormat>(), Ok(AuditFormat::Squid));
        assert_eq!("drop".parse::<OnFull>(), Ok(OnFull::Drop));
        assert_eq!("fr".parse::<PageLanguage>(), Ok(PageLanguage::Fr));
        assert_eq!(
            "Production".parse::<Environment>().unwrap_err(),
            "\"Production\" is not an environment (production, preprod, all)"
        );
        assert_eq!(
            "xml".parse::<AuditFormat>().unwrap_err(),
            "\"xml\" is not a format (json, squid, ecs, ocsf)"
        );
    }
}
