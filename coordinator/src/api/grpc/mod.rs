//! gRPC face of the admin API (package `meridian.v1`): the gate that admits each call under its method's
//! policy before tonic sees it, the one value that serves every service ([`GrpcAdmin`]), tonic's routes built
//! from every domain's services, and the helpers the domains' adapters (`<domain>/grpc.rs`) share.
//!
//! The gate refuses methods missing from the route table's gRPC methods (`routes::grpc_methods`, deny by
//! default) and authenticates with the `authorization: Bearer <token>` metadata, selecting the project with
//! `x-meridian-project`, exactly like REST. Each domain's adapters are thin: they convert messages to the
//! REST bodies and call [`AdminService`]. Every converter destructures what it converts and builds its
//! message without `..`: a field added on either side fails to compile until the gRPC face carries it, or
//! binds it to `_` with the reason. Must never hold domain logic or map errors differently from REST.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};
use tower::ServiceExt as _;

use super::auth::{self, missing_scope, RequestScope};
use super::error::ServiceError;
use super::routes::{self as table, grpc_method, MatchedRoute};
use super::service::{AdminService, ListPage, PageParams};

/// What an adapter's method answers.
pub(crate) type GrpcResult<T> = Result<Response<T>, Status>;

/// The admin gRPC services, all served by one value; each domain implements its services on it.
#[derive(Clone)]
pub(crate) struct GrpcAdmin {
    pub(crate) service: AdminService,
}

/// Adds a domain's tonic services to the routes, each decoding messages up to the given size
/// (`<domain>::grpc::services`).
pub(crate) type GrpcServices = fn(&mut RoutesBuilder, &GrpcAdmin, usize);

/// Builds tonic's routes for every domain's services, decoding messages up to `max_message_bytes`.
pub(crate) fn routes(service: AdminService, max_message_bytes: usize) -> tonic::service::Routes {
    let admin = GrpcAdmin { service };
    let mut routes = tonic::service::Routes::builder();
    for domain in table::domains() {
        (domain.grpc_services)(&mut routes, &admin, max_message_bytes);
    }
    routes.routes()
}

/// Admits gRPC calls under their method's policy, then hands them to tonic.
#[derive(Clone)]
pub(crate) struct GrpcGate {
    service: AdminService,
    routes: tonic::service::Routes,
}

impl GrpcGate {
    pub(crate) fn new(service: AdminService, routes: tonic::service::Routes) -> Self {
        GrpcGate { service, routes }
    }
}

fn status_response(status: Status) -> http::Response<Body> {
    status.into_http::<Body>()
}

impl tower::Service<http::Request<Body>> for GrpcGate {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        let routes = self.routes.clone();
        Box::pin(async move {
            let Some(method) = grpc_method(req.uri().path()) else {
                return Ok(status_response(Status::unimplemented("no such method")));
            };
            let source = req.extensions().get::<auth::ClientAddr>().map(|c| c.0);
            let mut resp = match auth::admit(&service, req.headers(), method.op, source).await {
                Ok(scope) => {
                    if let Some(scope) = scope {
                        req.extensions_mut().insert(scope);
                    }
                    match routes.oneshot(req).await {
                        Ok(resp) => resp.map(Body::new),
                        Err(never) => match never {},
                    }
                }
                Err(e) => status_response(e.into_status()),
            };
            resp.extensions_mut().insert(MatchedRoute(method.path));
            Ok(resp)
        })
    }
}

/// The admitted caller of a call (which the gate put there).
pub(crate) fn scope_of<T>(request: &Request<T>) -> Result<RequestScope, Status> {
    request
        .extensions()
        .get::<RequestScope>()
        .cloned()
        .ok_or_else(|| missing_scope().into_status())
}

/// A call's answer: the converted result, or the error mapped to its status as REST maps it to HTTP.
pub(crate) fn answer<T, U>(
    result: Result<T, ServiceError>,
    convert: impl FnOnce(T) -> U,
) -> GrpcResult<U> {
    result
        .map(|v| Response::new(convert(v)))
        .map_err(ServiceError::into_status)
}

/// proto3's empty string as "not given".
pub(crate) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Paging as REST reads it from the query; proto3 zero values mean "not given".
pub(crate) fn page(page_size: u32, page_token: String) -> PageParams {
    PageParams {
        page_size: (page_size > 0).then_some(u64::from(page_size)),
        page_token: non_empty(page_token),
    }
}

/// A page's items, converted, and its next page token.
pub(crate) fn list<T, U>(page: ListPage<T>, convert: impl FnMut(T) -> U) -> (Vec<U>, String) {
    (
        page.items.into_iter().map(convert).collect(),
        page.next_page_token,
    )
}
