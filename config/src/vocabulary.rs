//! Closed vocabularies of configuration keys (`environment`, `audit.format`...): each enum
//! parses its words with `FromStr`, an unknown word's error listing the known ones, and
//! prints them back with `Display`.

/// Declares such an enum: `vocabulary! { pub enum Route ("a route") { Direct = "direct", ... } }`.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every word of the vocabulary, in the order of the declaration.
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(format!(
                        "{other:?} is not {} ({})",
                        $what,
                        $name::WORDS.join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
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
