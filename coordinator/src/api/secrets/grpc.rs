//! Secrets' gRPC face: `SecretService` as a thin adapter over the same operations as REST, its rows of the
//! gRPC method table, and the converter of its message (which destructures what it converts, see
//! `grpc/mod.rs`).

use protocol::pb;
use tonic::service::RoutesBuilder;
use tonic::Request;

use crate::api::grpc::{answer, list, page, scope_of, GrpcAdmin, GrpcResult};
use crate::api::routes::{grpc, op, GrpcMethod};
use crate::state::{SecretVersionView, SecretView};

use super::{PutSecretRequest, SecretResource};

/// Secrets' gRPC methods.
pub(crate) static METHODS: &[GrpcMethod] = &[
    grpc("/meridian.v1.SecretService/PutSecret", &op::SECRET_PUT),
    grpc("/meridian.v1.SecretService/GetSecret", &op::SECRET_GET),
    grpc("/meridian.v1.SecretService/ListSecrets", &op::SECRET_LIST),
    grpc(
        "/meridian.v1.SecretService/DeleteSecret",
        &op::SECRET_DELETE,
    ),
    grpc(
        "/meridian.v1.SecretService/RewrapSecrets",
        &op::SECRET_REWRAP,
    ),
];

/// Adds this domain's services, decoding messages up to `max_message_bytes`.
pub(crate) fn services(routes: &mut RoutesBuilder, admin: &GrpcAdmin, max_message_bytes: usize) {
    use pb::secret_service_server::SecretServiceServer;
    let n = max_message_bytes;
    routes.add_service(SecretServiceServer::new(admin.clone()).max_decoding_message_size(n));
}

#[tonic::async_trait]
impl pb::secret_service_server::SecretService for GrpcAdmin {
    async fn put_secret(&self, request: Request<pb::PutSecretRequest>) -> GrpcResult<pb::Secret> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let req = PutSecretRequest {
            name: r.name,
            value: r.value,
            bindings: r.bindings.map(|b| b.items),
        };
        answer(self.service.put_secret(&scope, req).await, secret)
    }

    async fn get_secret(&self, request: Request<pb::GetSecretRequest>) -> GrpcResult<pb::Secret> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.get_secret(&scope, &r.name).await, secret)
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> GrpcResult<pb::ListSecretsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(
            self.service
                .list_secrets(&scope, &page(r.page_size, r.page_token))
                .await,
            |p| {
                let (items, next_page_token) = list(p, secret);
                pb::ListSecretsResponse {
                    items,
                    next_page_token,
                }
            },
        )
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> GrpcResult<pb::DeleteSecretResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.delete_secret(&scope, &r.name).await, |()| {
            pb::DeleteSecretResponse {}
        })
    }

    async fn rewrap_secrets(
        &self,
        request: Request<pb::RewrapSecretsRequest>,
    ) -> GrpcResult<pb::RewrapSecretsResponse> {
        let scope = scope_of(&request)?;
        let new_data_keys = request.get_ref().new_data_keys;
        answer(
            self.service.rewrap_secrets(&scope, new_data_keys).await,
            |r| pb::RewrapSecretsResponse {
                projects: r.projects,
                master_key_id: r.master_key_id,
                new_data_keys: r.new_data_keys,
                secret_versions: r.secret_versions,
            },
        )
    }
}

// ---- converters ----

fn secret(s: SecretResource) -> pb::Secret {
    let SecretResource {
        // REST's resource id is the secret's name, which the message carries as `name`.
        id: _,
        secret,
    } = s;
    let SecretView {
        project_id,
        name,
        latest_version,
        versions,
        bindings,
        created_at,
        updated_at,
    } = secret;
    pb::Secret {
        project_id,
        name,
        latest_version,
        versions: versions
            .into_iter()
            .map(|v| {
                let SecretVersionView {
                    version,
                    created_at,
                } = v;
                pb::SecretVersion {
                    version,
                    created_at,
                }
            })
            .collect(),
        bindings,
        created_at,
        updated_at,
    }
}
