//! The console's static files, embedded in the binary and served under content-hashed names
//! (`/assets/<name>.<hash>.<ext>`) with a year-long immutable cache: a new build changes the
//! name of whatever changed, so no browser ever holds a stale copy.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

struct Asset {
    /// `htmx.min.js`, `console.css`, …
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const FILES: [Asset; 4] = [
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/htmx.min.js"),
    },
    Asset {
        name: "htmx-sse.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/htmx-sse.js"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/console.css"),
    },
];

/// Each file's served path, `/assets/<stem>.<first 12 hex digits of its blake3>.<ext>`.
static PATHS: LazyLock<Vec<String>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|asset| {
            let hash = blake3::hash(asset.bytes).to_hex();
            let (stem, ext) = asset.name.rsplit_once('.').unwrap_or((asset.name, ""));
            format!("/assets/{stem}.{}.{ext}", &hash[..12])
        })
        .collect()
});

/// The paths the pages link to.
#[derive(Debug, Clone, Copy)]
pub struct Assets {
    pub htmx: &'static str,
    pub sse: &'static str,
    pub script: &'static str,
    pub style: &'static str,
}

pub fn paths() -> Assets {
    let path = |index: usize| PATHS.get(index).map_or("", String::as_str);
    Assets {
        htmx: path(0),
        sse: path(1),
        script: path(2),
        style: path(3),
    }
}

/// `GET /assets/{name}`: the file whose hashed name this is; any other name is 404 (an old
/// hash included, so a cache never keeps a wrong file under a right name).
pub async fn serve(Path(name): Path<String>) -> Response {
    let wanted = format!("/assets/{name}");
    let Some(index) = PATHS.iter().position(|path| *path == wanted) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let Some(asset) = FILES.get(index) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}
