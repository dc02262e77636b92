//! The gRPC face of entering a running job: `JobExecService` (`ExecJob`; `CopyFromJob`, which
//! streams the file as `FileChunk`s, the first carrying its size and mode; `ListJobDir`; and `AttachJob`,
//! an interactive terminal session as a stream each way, opened by its first message), adapters over the
//! same operations as REST, and their rows of the gRPC method table.

use std::pin::Pin;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures::{Stream, StreamExt};
use protocol::pb;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status, Streaming};

use crate::api::grpc::{answer, non_empty, scope_of, GrpcAdmin, GrpcResult};
use crate::api::routes::{grpc, op, GrpcMethod};

use super::attach::{caller_channels, AttachJobRequest, CallerSide};
use super::terminal_frames::{
    TerminalClientFrame, TerminalEndView, TerminalServerFrame, MAX_INPUT_FRAME,
};
use super::{invalid, CopyQuery, ExecJobRequest, ExecJobView, JobDirEntryView, JobDirView};

/// The gRPC methods into and out of a running job.
pub(crate) static METHODS: &[GrpcMethod] = &[
    grpc("/meridian.v1.JobExecService/ExecJob", &op::JOB_EXEC),
    grpc("/meridian.v1.JobExecService/CopyFromJob", &op::JOB_COPY),
    grpc("/meridian.v1.JobExecService/ListJobDir", &op::JOB_LIST_DIR),
    grpc("/meridian.v1.JobExecService/AttachJob", &op::JOB_ATTACH),
];

/// Adds `JobExecService`, decoding messages up to `max_message_bytes`.
pub(crate) fn services(routes: &mut RoutesBuilder, admin: &GrpcAdmin, max_message_bytes: usize) {
    use pb::job_exec_service_server::JobExecServiceServer;
    routes.add_service(
        JobExecServiceServer::new(admin.clone()).max_decoding_message_size(max_message_bytes),
    );
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::FileChunk, Status>> + Send>>;
type TerminalStream = Pin<Box<dyn Stream<Item = Result<pb::TerminalOutput, Status>> + Send>>;

#[tonic::async_trait]
impl pb::job_exec_service_server::JobExecService for GrpcAdmin {
    async fn exec_job(
        &self,
        request: Request<pb::ExecJobRequest>,
    ) -> GrpcResult<pb::ExecJobResponse> {
        let scope = scope_of(&request)?;
        let pb::ExecJobRequest {
            id,
            command,
            replica,
            stdin,
            timeout_secs,
        } = request.into_inner();
        let req = ExecJobRequest {
            command,
            replica: Some(u64::from(replica)),
            stdin: (!stdin.is_empty()).then(|| STANDARD.encode(&stdin)),
            timeout_secs: (timeout_secs > 0).then_some(u64::from(timeout_secs)),
        };
        answer(self.service.exec_job(&scope, &id, req).await, exec_result)
    }

    type CopyFromJobStream = ChunkStream;
    type AttachJobStream = TerminalStream;

    async fn attach_job(
        &self,
        request: Request<Streaming<pb::AttachJobInput>>,
    ) -> Result<Response<TerminalStream>, Status> {
        use pb::attach_job_input::Input;
        let scope = scope_of(&request)?;
        let mut inputs = request.into_inner();
        let Some(Input::Open(open)) = inputs.message().await?.and_then(|m| m.input) else {
            return Err(invalid("open", "the first message must open the session").into_status());
        };
        let pb::AttachJobOpen {
            id,
            command,
            replica,
            size,
            timeout_secs,
            term,
        } = open;
        let req = AttachJobRequest {
            command,
            replica: Some(u64::from(replica)),
            cols: size.map(|s| u64::from(s.cols)),
            rows: size.map(|s| u64::from(s.rows)),
            timeout_secs: (timeout_secs > 0).then_some(u64::from(timeout_secs)),
            term: non_empty(term),
        };
        let relay = self
            .service
            .attach_job(&scope, &id, req)
            .await
            .map_err(|e| e.into_status())?;
        let (side, ends) = caller_channels();
        let CallerSide {
            input,
            output,
            refuse,
        } = side;
        tokio::spawn(relay.run(ends));
        tokio::spawn(async move {
            // A message that is not input or a resize ends the session, saying so; a broken stream ends
            // it too. The caller closing its side only means it has nothing more to type: the session goes
            // on until the command ends or the caller drops the call.
            let why = loop {
                let message = match inputs.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        input.closed().await;
                        return;
                    }
                    Err(_) => return,
                };
                let frame = match message.input {
                    Some(Input::Data(bytes)) if bytes.len() <= MAX_INPUT_FRAME => {
                        TerminalClientFrame::Input(bytes)
                    }
                    Some(Input::Data(_)) => {
                        break format!("data: at most {MAX_INPUT_FRAME} bytes per message")
                    }
                    Some(Input::Resize(size)) => TerminalClientFrame::Resize {
                        cols: u16::try_from(size.cols).unwrap_or(u16::MAX),
                        rows: u16::try_from(size.rows).unwrap_or(u16::MAX),
                    },
                    Some(Input::Open(_)) => break "open: the session is open already".to_owned(),
                    None => break "input: a message carries data or a resize".to_owned(),
                };
                if input.send(frame).await.is_err() {
                    return;
                }
            };
            refuse.because(why).await;
        });
        // The first end is the last message.
        let outputs = futures::stream::unfold(Some(output), |output| async move {
            let mut output = output?;
            let frame = output.recv().await?;
            let last = matches!(frame, TerminalServerFrame::End(_));
            Some((Ok(terminal_output(frame)), (!last).then_some(output)))
        });
        Ok(Response::new(Box::pin(outputs)))
    }

    async fn list_job_dir(
        &self,
        request: Request<pb::CopyFromJobRequest>,
    ) -> GrpcResult<pb::JobDirListing> {
        let scope = scope_of(&request)?;
        let pb::CopyFromJobRequest { id, path, replica } = request.into_inner();
        let query = CopyQuery {
            path: non_empty(path),
            replica: Some(u64::from(replica)),
        };
        answer(
            self.service.list_job_dir(&scope, &id, &query).await,
            listing,
        )
    }

    async fn copy_from_job(
        &self,
        request: Request<pb::CopyFromJobRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let scope = scope_of(&request)?;
        let pb::CopyFromJobRequest { id, path, replica } = request.into_inner();
        let query = CopyQuery {
            path: non_empty(path),
            replica: Some(u64::from(replica)),
        };
        let download = self
            .service
            .copy_from_job(&scope, &id, &query)
            .await
            .map_err(|e| e.into_status())?;
        let (size, mode) = (download.size, download.mode);
        let mut first = true;
        let chunks = download.chunks.map(move |piece| {
            let header = std::mem::take(&mut first);
            piece
                .map(|data| pb::FileChunk {
                    data: data.to_vec(),
                    size: if header { size } else { 0 },
                    mode: if header { mode } else { 0 },
                })
                .map_err(|e| e.into_status())
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}

fn terminal_output(frame: TerminalServerFrame) -> pb::TerminalOutput {
    use pb::terminal_output::Output;
    let output = match frame {
        TerminalServerFrame::Output(bytes) => Output::Data(bytes),
        TerminalServerFrame::End(end) => {
            let TerminalEndView {
                exit_code,
                signal,
                timed_out,
                idle,
                error,
            } = end;
            Output::End(pb::TerminalEnd {
                exit_code,
                signal,
                timed_out,
                idle,
                error: error.unwrap_or_default(),
            })
        }
    };
    pb::TerminalOutput {
        output: Some(output),
    }
}

fn exec_result(v: ExecJobView) -> pb::ExecJobResponse {
    let ExecJobView {
        exit_code,
        signal,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        timed_out,
        attempt,
        replica,
        node,
    } = v;
    // The view carries the bytes as base64 for JSON; gRPC carries them as they are.
    pb::ExecJobResponse {
        exit_code,
        signal,
        stdout: STANDARD.decode(stdout).unwrap_or_default(),
        stderr: STANDARD.decode(stderr).unwrap_or_default(),
        stdout_truncated,
        stderr_truncated,
        timed_out,
        attempt,
        replica,
        node,
    }
}

fn listing(l: JobDirView) -> pb::JobDirListing {
    let JobDirView { path, entries } = l;
    pb::JobDirListing {
        path,
        entries: entries
            .into_iter()
            .map(|e| {
                let JobDirEntryView {
                    name,
                    kind,
                    size,
                    mode,
                } = e;
                pb::JobFileEntry {
                    name,
                    kind: kind.as_str().to_owned(),
                    size,
                    mode,
                }
            })
            .collect(),
    }
}
