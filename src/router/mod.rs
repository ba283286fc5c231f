//! Which models may answer a request. A route is selected by the model name the app asked for
//! (a route alias such as `auto`, or a catalogue model name, which is its own one-target
//! route), and yields an ordered list of candidate models. Route aliases win over catalogue
//! names, so the platform team can give `gpt-4o` fallbacks without the app changing anything.
//! The routing issue adds strategies on top of this shape.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ModelConfig};

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// Candidates in order of preference.
    pub targets: Vec<Arc<ModelConfig>>,
    /// `routes[].cache.enabled` (`None` for a catalogue model's own route).
    pub cache_enabled: Option<bool>,
    /// `routes[].cache.threshold`.
    pub cache_threshold: Option<f32>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("The model `{requested}` does not exist or you do not have access to it. Models served here: {available}.")]
    UnknownModel { requested: String, available: Arc<str> },
}

#[derive(Debug, Default)]
pub struct Router {
    by_name: HashMap<Box<str>, Arc<Route>>,
    default: Option<Arc<Route>>,
    available: Arc<str>,
    /// Names listed by `GET /v1/models`: catalogue models then route aliases, sorted.
    pub model_ids: Vec<Arc<str>>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let mut by_name: HashMap<Box<str>, Arc<Route>> = HashMap::new();
        for (name, model) in &config.models {
            let route = Route {
                name: model.name.clone(),
                targets: vec![model.clone()],
                cache_enabled: None,
                cache_threshold: None,
            };
            by_name.insert(name.as_str().into(), Arc::new(route));
        }
        let mut default = None;
        for r in &config.routes {
            let targets = r
                .targets
                .iter()
                .filter_map(|t| config.models.get(&**t).cloned())
                .collect();
            let route = Arc::new(Route {
                name: r.name.clone(),
                targets,
                cache_enabled: r.cache_enabled,
                cache_threshold: r.cache_threshold,
            });
            for alias in &r.models {
                by_name.insert(alias.as_str().into(), route.clone());
            }
            if config.default_route.as_deref() == Some(&*r.name) {
                default = Some(route);
            }
        }
        let mut model_ids: Vec<Arc<str>> = by_name.keys().map(|k| Arc::from(&**k)).collect();
        model_ids.sort();
        let available = if model_ids.is_empty() {
            "none (the config has no models)".to_owned()
        } else {
            model_ids.iter().take(20).map(|s| &**s).collect::<Vec<_>>().join(", ")
                + if model_ids.len() > 20 { ", …" } else { "" }
        };
        Router {
            by_name,
            default,
            available: available.into(),
            model_ids,
        }
    }

    pub fn decide(&self, requested: &str) -> Result<&Arc<Route>, RouteError> {
        self.by_name.get(requested).ok_or_else(|| RouteError::UnknownModel {
            requested: requested.chars().take(256).collect(),
            available: self.available.clone(),
        })
    }

    pub fn default_route(&self) -> Option<&Arc<Route>> {
        self.default.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
providers: { p: { base_url: "http://127.0.0.1:1/v1" } }
models:
  a: { provider: p }
  b: { provider: p }
routes:
  - { name: chat, models: [auto, a], targets: [{ model: b }, { model: a }] }
default_route: chat
"#;
        Config::load(text, &|_: &str| None).unwrap()
    }

    #[test]
    fn aliases_win_over_catalogue_names() {
        let r = Router::new(&config());
        let route = r.decide("a").unwrap();
        assert_eq!(&*route.name, "chat");
        assert_eq!(route.targets.iter().map(|m| &*m.name).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(&*r.decide("b").unwrap().name, "b");
        assert_eq!(&*r.default_route().unwrap().name, "chat");
        assert_eq!(r.model_ids.iter().map(|s| &**s).collect::<Vec<_>>(), ["a", "auto", "b"]);
    }

    #[test]
    fn unknown_models_list_what_exists() {
        let e = Router::new(&config()).decide("gpt-5").unwrap_err();
        assert!(e.to_string().contains("Models served here: a, auto, b"), "{e}");
    }
}
