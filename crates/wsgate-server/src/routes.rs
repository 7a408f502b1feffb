//! The route table: which configured route a request path belongs to, in configuration order.

use crate::config::Route;
pub use crate::pattern::Pattern;

/// A route that matched a request path.
#[derive(Debug)]
pub struct Match<'a> {
    /// The route's position in the configuration.
    pub index: usize,
    /// The route.
    pub route: &'a Route,
    /// Its path parameters, e.g. `[("room", "lobby")]`.
    pub params: Vec<(String, String)>,
}

/// The routes of a configuration, ready for lookup.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the table from validated routes (each owns its parsed pattern).
    pub fn new(routes: &[Route]) -> Router {
        Router {
            routes: routes.to_vec(),
        }
    }

    /// The first route, in configuration order, whose pattern matches `path`, with its parameters.
    pub fn find(&self, path: &str) -> Option<Match<'_>> {
        self.routes.iter().enumerate().find_map(|(index, route)| {
            route.pattern.captures(path).map(|params| Match {
                index,
                route,
                params,
            })
        })
    }
}
