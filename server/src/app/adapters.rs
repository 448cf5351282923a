//! `/v1/adapters`: upload (native file, or a PEFT folder's two files as multipart),
//! list, describe, delete. A new version of an adapter that collections use starts
//! their background re-embedding.

use aside_adapters::{format, peft, Dims, PutOutcome};
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::{blocking, Shared};

/// Reads a PEFT folder sent as multipart parts named `adapter_config.json` and
/// `adapter_model.safetensors` (by part name or file name).
async fn peft_parts(mut mp: Multipart) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
    let (mut cfg, mut weights) = (None, None);
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("multipart: {e}")))?
    {
        let name = field
            .file_name()
            .or(field.name())
            .unwrap_or_default()
            .to_owned();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::BadRequest(format!("multipart part `{name}`: {e}")))?;
        match name.as_str() {
            "adapter_config.json" => cfg = Some(data.to_vec()),
            "adapter_model.safetensors" => weights = Some(data.to_vec()),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected multipart part `{other}` (send adapter_config.json and adapter_model.safetensors)"
                )))
            }
        }
    }
    match (cfg, weights) {
        (Some(c), Some(w)) => Ok((c, w)),
        _ => Err(ApiError::BadRequest(
            "a PEFT upload needs both adapter_config.json and adapter_model.safetensors".into(),
        )),
    }
}

pub async fn put_adapter(
    State(s): State<Shared>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    aside_adapters::registry::check_name(&name)?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let bytes: Vec<u8> = if multipart {
        let mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let (cfg, weights) = peft_parts(mp).await?;
        let dims = Dims::of(&s.backbone);
        let sha = s.backbone.sha256().to_owned();
        blocking(move || {
            let a = peft::convert(&cfg, &weights, &dims)?;
            let mut meta = a.meta().clone();
            meta.backbone = Some(sha);
            Ok(format::write_tensors(&meta.to_map(), a.tensors())?)
        })
        .await?
    } else {
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(e.body_text()),
                _ => ApiError::BadRequest(e.body_text()),
            })?;
        body.to_vec()
    };
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "empty body: send the adapter file".into(),
        ));
    }
    let reg = s.registry.clone();
    let n = name.clone();
    let outcome = blocking(move || Ok(reg.put(&n, &bytes)?)).await?;
    let (status, info) = match &outcome {
        PutOutcome::Created(i) => (StatusCode::CREATED, i.clone()),
        PutOutcome::Unchanged(i) => (StatusCode::OK, i.clone()),
    };
    if status == StatusCode::CREATED {
        super::collections::start_reembeds(&s, &name);
    }
    Ok((status, [("x-aside-adapter", name)], Json(info)).into_response())
}

pub async fn list(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"adapters": s.registry.list(), "cache": s.registry.stats()}))
}

pub async fn get_one(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let info = s.registry.current_info(&name)?;
    let versions: Vec<String> = s
        .registry
        .versions(&name)?
        .into_iter()
        .map(|v| v.version)
        .collect();
    let mut v = serde_json::to_value(info).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["versions"] = serde_json::json!(versions);
    Ok(Json(v))
}

pub async fn delete_adapter(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users: Vec<String> = s
        .index
        .list()
        .into_iter()
        .map(|c| c.config())
        .filter(|c| c.space.adapter.as_deref() == Some(name.as_str()))
        .map(|c| c.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "adapter `{name}` is used by collection(s) {}; delete them first",
            users.join(", ")
        )));
    }
    let reg = s.registry.clone();
    let n = name.clone();
    let info = blocking(move || Ok(reg.delete(&n)?)).await?;
    Ok(Json(
        serde_json::json!({"deleted": info.name, "version": info.version}),
    ))
}
