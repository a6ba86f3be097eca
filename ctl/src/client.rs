//! One connection to the cluster shared by a command's calls, with the generated gRPC clients.

use tonic::transport::{Channel, Endpoint};

use oxcd_proto::etcdserverpb::{kv_client::KvClient, maintenance_client::MaintenanceClient};

use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;

pub struct Connection {
    channel: Channel,
    pub command_timeout: std::time::Duration,
}

impl Connection {
    /// Connects to the first endpoint that answers within the dial timeout.
    pub async fn open(global: &GlobalFlags) -> CtlResult<Connection> {
        let mut last_error = String::from("no endpoints");
        for endpoint in &global.endpoints {
            let url = if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            let dial = Endpoint::from_shared(url)
                .map_err(|e| Failure::new(ExitCode::BadConnection, e.to_string()))?
                .connect_timeout(global.dial_timeout);
            match dial.connect().await {
                Ok(channel) => {
                    return Ok(Connection {
                        channel,
                        command_timeout: global.command_timeout,
                    })
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(Failure::new(ExitCode::BadConnection, last_error))
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }

    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone())
    }
}
