use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{require_admin, require_user, HeaderFiller};
use crate::auth::AuthService;
use crate::error::EtcdError;
use crate::raft::{new_member_id, Consensus, MemberChange, MemberInfo};

/// Membership changes are the root role's while auth is on; listing needs a caller.
pub struct ClusterApi {
    pub consensus: Arc<Consensus>,
    pub auth: Arc<AuthService>,
    pub header: Arc<HeaderFiller>,
}

fn to_wire(m: MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.member.name,
        peer_ur_ls: m.member.peer_urls,
        client_ur_ls: m.member.client_urls,
        is_learner: m.learner,
    }
}

impl ClusterApi {
    /// Commits `change`, then lists the members as this member sees them once the change has
    /// reached it (so the answer includes the change, as etcd's does).
    async fn change(&self, change: MemberChange) -> Result<Vec<Member>, EtcdError> {
        let id = match &change {
            MemberChange::Add { id, .. }
            | MemberChange::Remove { id }
            | MemberChange::UpdatePeerUrls { id, .. }
            | MemberChange::Promote { id }
            | MemberChange::Publish { id, .. } => *id,
        };
        self.consensus.change_members(change.clone()).await?;
        let members = match &change {
            // The leader has committed the removal. A member removing itself may never see
            // that entry (the leader stops replicating to it) and is about to stop, so it
            // answers at once rather than wait for its own copy.
            MemberChange::Remove { .. } => {
                let mut members = self.consensus.members();
                members.retain(|m| m.id != id);
                members
            }
            _ => {
                self.consensus
                    .members_after(|members| {
                        let m = members.iter().find(|m| m.id == id);
                        match &change {
                            MemberChange::Add { learner, .. } => {
                                m.is_some_and(|m| m.learner == *learner)
                            }
                            MemberChange::Promote { .. } => m.is_some_and(|m| !m.learner),
                            MemberChange::UpdatePeerUrls { peer_urls, .. } => {
                                m.is_some_and(|m| &m.member.peer_urls == peer_urls)
                            }
                            MemberChange::Remove { .. } | MemberChange::Publish { .. } => true,
                        }
                    })
                    .await
            }
        };
        Ok(members.into_iter().map(to_wire).collect())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        let r = req.into_inner();
        let added = async {
            crate::cluster::validate_peer_urls(&r.peer_ur_ls)
                .map_err(|_| EtcdError::MemberBadUrls)?;
            let id = new_member_id(&r.peer_ur_ls);
            let members = self
                .change(MemberChange::Add {
                    id,
                    peer_urls: r.peer_ur_ls.clone(),
                    learner: r.is_learner,
                })
                .await?;
            let member = members.iter().find(|m| m.id == id).cloned();
            Ok::<_, EtcdError>(MemberAddResponse {
                header: None,
                member,
                members,
            })
        };
        respond!(self, added)
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        let id = req.into_inner().id;
        respond!(self, async {
            let members = self.change(MemberChange::Remove { id }).await?;
            Ok::<_, EtcdError>(MemberRemoveResponse {
                header: None,
                members,
            })
        })
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        let r = req.into_inner();
        respond!(self, async {
            crate::cluster::validate_peer_urls(&r.peer_ur_ls)
                .map_err(|_| EtcdError::MemberBadUrls)?;
            let change = MemberChange::UpdatePeerUrls {
                id: r.id,
                peer_urls: r.peer_ur_ls,
            };
            let members = self.change(change).await?;
            Ok::<_, EtcdError>(MemberUpdateResponse {
                header: None,
                members,
            })
        })
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        require_user(&self.auth, &req).await?;
        let linearizable = req.into_inner().linearizable;
        respond!(self, async {
            if linearizable {
                self.consensus.read_barrier().await?;
            }
            let members = self.consensus.members().into_iter().map(to_wire).collect();
            Ok::<_, EtcdError>(MemberListResponse {
                header: None,
                members,
            })
        })
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        require_admin(&self.auth, &req).await?;
        let id = req.into_inner().id;
        respond!(self, async {
            let members = self.change(MemberChange::Promote { id }).await?;
            Ok::<_, EtcdError>(MemberPromoteResponse {
                header: None,
                members,
            })
        })
    }
}
