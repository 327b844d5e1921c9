//! Session life cycle: minting (quotas, the lineage's expiry bound), ending a session with
//! everything below it (by its lineage's token, by an operator, by expiry), and the operator's
//! view (`GET /v1/sessions`). The routes are in `sessions` (agent) and `operator`; the
//! records themselves live in [`super::state`].
//!
//! Invariants: a child session never outlives its root (its expiry is its parent's at the
//! latest, so a whole lineage shares the root's bound); one peer uid holds at most
//! `sessions.max_per_uid` sessions and one lineage at most `sessions.max_per_lineage`, so one
//! agent cannot take every slot of `limits.max_sessions`; an ended session's running jobs are
//! cancelled, its pending approvals dropped and its session grants forgotten, and the ending
//! is on the audit record (`session_end`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use http::StatusCode;

use super::Server;
use super::api::{ApiError, Peer};
use super::auth;
use super::jobs::cancel_job;
use super::state::{JobCounts, Metrics, Session, unix_now};
use crate::audit::Event;

/// Who ends a session (the `by` of `session_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// A token of the session's own lineage (`DELETE /v1/sessions/{id}` on the agent socket).
    Agent(u32),
    /// An operator (`DELETE /v1/sessions/{id}` on the operator socket).
    Operator(u32),
    /// The reaper: the token expired and nothing runs.
    Expired,
}

/// What ending a session did.
#[derive(Debug, Default)]
pub struct Ended {
    /// The session and every descendant, sorted.
    pub sessions: Vec<String>,
    pub jobs_cancelled: usize,
    /// Workspaces to remove (not operators' directories chosen at pairing).
    workspaces: Vec<PathBuf>,
}

/// What a pairing code gives the session it creates (and its descendants inherit).
#[derive(Debug, Clone, Default)]
pub struct Paired<'a> {
    pub code_id: &'a str,
    pub label: Option<&'a str>,
    /// The operator's directory, used in place (neither created nor removed).
    pub workspace: Option<&'a Path>,
}

fn internal(e: String) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("cannot create the session: {e}"),
    )
}

impl Server {
    /// Mints a session (a child of `parent` when given) with its own workspace, or with its
    /// parent's (`share`: `Some(read_only)`; only for a child).
    pub fn create_session(
        &self,
        peer: Peer,
        parent: Option<&str>,
        profile: Option<String>,
        approved: bool,
        share: Option<bool>,
    ) -> Result<serde_json::Value, ApiError> {
        self.mint(peer, parent, profile, approved, None, share)
    }

    /// Like [`Server::create_session`]; with `paired`, a root session from a pairing code:
    /// labelled, and in the operator's directory when the code names one.
    pub fn create_session_in(
        &self,
        peer: Peer,
        parent: Option<&str>,
        profile: Option<String>,
        approved: bool,
        paired: Option<Paired<'_>>,
    ) -> Result<serde_json::Value, ApiError> {
        self.mint(peer, parent, profile, approved, paired, None)
    }

    fn mint(
        &self,
        peer: Peer,
        parent: Option<&str>,
        profile: Option<String>,
        approved: bool,
        paired: Option<Paired<'_>>,
        share: Option<bool>,
    ) -> Result<serde_json::Value, ApiError> {
        let parent_profile =
            parent.and_then(|p| self.state().sessions.get(p).map(|s| s.profile.clone()));
        let profile = match (profile, parent_profile) {
            (Some(p), Some(pp)) if p != pp => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("a child session inherits its parent's profile {pp:?}"),
                ));
            }
            (_, Some(pp)) => pp,
            (Some(p), None) => p,
            (None, None) => self.config.default_profile.clone(),
        };
        if !self.config.profiles.contains_key(&profile) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_profile",
                format!(
                    "no profile {profile:?}; available: {}",
                    self.config
                        .profiles
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if parent.is_none() && !approved && self.config.approval_profiles.contains(&profile) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "approval_required",
                format!("profile {profile:?} needs an operator's approval to bind"),
            ));
        }
        let id = auth::new_id("s_").map_err(|e| internal(e.to_string()))?;
        let minted = auth::mint().map_err(|e| internal(e.to_string()))?;
        let ttl = self.config.limits.token_ttl;
        let now = Instant::now();
        let created_at = unix_now();
        // Admission, the lineage's bounds and the slot, under one lock.
        let (offset, root, expires, expires_at, label, code) = {
            let mut st = self.state();
            let (root, mut expires, mut expires_at, label, code) = match parent {
                None => (
                    id.clone(),
                    now + ttl,
                    created_at + ttl.as_secs(),
                    paired.as_ref().and_then(|p| p.label.map(str::to_string)),
                    paired.as_ref().map(|p| p.code_id.to_string()),
                ),
                Some(p) => {
                    let ps = st.sessions.get(p).ok_or_else(|| {
                        ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "unauthorized",
                            "the parent session has ended",
                        )
                    })?;
                    (
                        ps.root.clone(),
                        ps.expires,
                        ps.expires_at,
                        ps.label.clone(),
                        ps.pairing_code.clone(),
                    )
                }
            };
            // A child gets a fresh token_ttl, but never beyond its parent's (so its root's)
            // expiry: a lineage cannot outlive the session an operator or agent started.
            if parent.is_some() {
                expires = expires.min(now + ttl);
                expires_at = expires_at.min(created_at + ttl.as_secs());
            }
            let quota = |code: &'static str, message: String| {
                Metrics::inc(&self.metrics.rate_limited);
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
            };
            if st.sessions.len() >= self.config.limits.max_sessions {
                return Err(quota(
                    "too_many_sessions",
                    "the daemon holds limits.max_sessions sessions; an operator can end some (`execbox sessions end ID`), an agent its own with DELETE /v1/sessions/{id}".into(),
                ));
            }
            let (in_lineage, of_uid) = st.counts_for(&root, peer.uid);
            let s = &self.config.sessions;
            if of_uid >= s.max_per_uid {
                return Err(quota(
                    "uid_session_quota",
                    format!(
                        "uid {} holds sessions.max_per_uid ({}) sessions; end some with DELETE /v1/sessions/{{id}}",
                        peer.uid, s.max_per_uid
                    ),
                ));
            }
            if parent.is_some() && in_lineage >= s.max_per_lineage {
                return Err(quota(
                    "lineage_session_quota",
                    format!(
                        "this session's lineage (its root and every descendant) holds sessions.max_per_lineage ({}) sessions; end child sessions you no longer need",
                        s.max_per_lineage
                    ),
                ));
            }
            st.next_sandbox_offset = st.next_sandbox_offset.wrapping_add(1);
            (
                st.next_sandbox_offset,
                root,
                expires,
                expires_at,
                label,
                code,
            )
        };
        // Each session has its own workspace and, as root, its own host uid: two sessions'
        // sandboxes never share files or an identity — unless a parent hands its own workspace
        // (and so its identity) to a child it spawns, as the child's request asked.
        let operator_dir = paired.as_ref().and_then(|p| p.workspace);
        let mut keep_workspace = operator_dir.is_some();
        let mut workspace = match operator_dir {
            Some(w) => w.to_path_buf(),
            None => self.config.workspace_root.join(&id),
        };
        let mut sandbox_id = self.config.sandbox_uid_base.saturating_add(offset);
        let mut workspace_read_only = false;
        if let Some(read_only) = share {
            let st = self.state();
            let Some(p) = parent.and_then(|p| st.sessions.get(p)) else {
                return Err(ApiError::bad(
                    "workspace \"parent_ro\" or \"parent_rw\" is for a child session: send the parent's token",
                ));
            };
            workspace = p.workspace.clone();
            sandbox_id = p.sandbox_id;
            keep_workspace = true;
            // A child of a read-only child is read-only too.
            workspace_read_only = read_only || p.workspace_read_only;
        }
        if !keep_workspace {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&workspace)
                .map_err(|e| internal(format!("{}: {e}", workspace.display())))?;
            if self.am_root {
                // The agent can own its files: its primary group may read (never write) the
                // workspace, and the setgid bit gives everything made inside the same group.
                // The sandbox keeps running as the sandbox uid and gid alone (the group is not
                // mapped into it; `prepare::Identity`). Not for group 0: root reads anyway.
                let group = (self.config.sessions.owner_group && peer.gid != 0).then_some(peer.gid);
                if group.is_some() {
                    // Before the chown: the kernel drops a setgid bit set by a process without
                    // CAP_FSETID on a file of a group it is not in (the owner's).
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&workspace, std::fs::Permissions::from_mode(0o2750))
                        .map_err(|e| internal(format!("chmod {}: {e}", workspace.display())))?;
                }
                std::os::unix::fs::chown(
                    &workspace,
                    Some(sandbox_id),
                    Some(group.unwrap_or(sandbox_id)),
                )
                .map_err(|e| internal(format!("chown {}: {e}", workspace.display())))?;
            }
        }
        let session = Session {
            id: id.clone(),
            token_hash: minted.hash,
            spawned_by: parent.map(str::to_string),
            root,
            owner_uid: peer.uid,
            profile: profile.clone(),
            workspace: workspace.clone(),
            sandbox_id,
            created_at,
            expires,
            expires_at,
            running: 0,
            keep_workspace,
            workspace_read_only,
            label,
            pairing_code: code,
            counts: JobCounts::default(),
        };
        self.state().sessions.insert(id.clone(), session);
        Metrics::inc(&self.metrics.sessions_created);
        tracing::info!(session = %id, spawned_by = parent, uid = peer.uid, pid = peer.pid, profile = %profile, "session created");
        Ok(serde_json::json!({
            "session": id,
            "token": format!("{id}.{}", minted.secret),
            "expires_at": expires_at,
            "profile": profile,
            "workspace": workspace,
            "spawned_by": parent,
            "workspace_access": match (share.is_some(), workspace_read_only) {
                (_, true) => "parent_ro",
                (true, false) => "parent_rw",
                (false, false) => "own",
            },
        }))
    }

    /// Ends `id` and every session below it: running jobs are cancelled (killed), pending
    /// approvals dropped (their requests are refused), session grants and retained output
    /// forgotten, the sessions removed. `None` when there is no such session.
    pub fn end_subtree(&self, id: &str) -> Option<Ended> {
        let mut st = self.state();
        if !st.sessions.contains_key(id) {
            return None;
        }
        let doomed = st.subtree(id);
        Some(self.end_locked(&mut st, doomed))
    }

    fn end_locked(&self, st: &mut super::state::State, doomed: Vec<String>) -> Ended {
        let mut jobs_cancelled = 0;
        for j in st.jobs.values() {
            if doomed.contains(&j.session)
                && let Some(c) = &j.cancel
            {
                cancel_job(c, true);
                jobs_cancelled += 1;
            }
        }
        self.approvals.end_sessions(&doomed);
        self.retained.end_sessions(&doomed);
        let mut workspaces = vec![];
        for s in &doomed {
            if let Some(sess) = st.remove_session(s)
                && !sess.keep_workspace
            {
                workspaces.push(sess.workspace);
            }
        }
        Ended {
            sessions: doomed,
            jobs_cancelled,
            workspaces,
        }
    }

    /// Ends `id` and its descendants for `by`, removes their workspaces in the background and
    /// records `session_end` (after the fact: ending only takes capability away).
    pub fn end_session(&self, id: &str, by: EndedBy) -> Option<Ended> {
        let mut ended = self.end_subtree(id)?;
        self.after_end(id, by, &mut ended);
        Some(ended)
    }

    fn after_end(&self, id: &str, by: EndedBy, ended: &mut Ended) {
        let workspaces = std::mem::take(&mut ended.workspaces);
        if !workspaces.is_empty() {
            tokio::task::spawn_blocking(move || {
                for ws in workspaces {
                    // The jobs are being killed; a straggler's files stay behind.
                    let _ = std::fs::remove_dir_all(&ws);
                }
            });
        }
        let (by_name, peer_uid, operator_uid) = match by {
            EndedBy::Agent(u) => ("agent", Some(u), None),
            EndedBy::Operator(u) => ("operator", None, Some(u)),
            EndedBy::Expired => ("expired", None, None),
        };
        tracing::info!(session = %id, by = by_name, ended = ended.sessions.len(), jobs_cancelled = ended.jobs_cancelled, "session ended");
        self.record_detached(Event::SessionEnd {
            session: id.to_string(),
            by: by_name.into(),
            ended: ended.sessions.clone(),
            jobs_cancelled: ended.jobs_cancelled,
            peer_uid,
            operator_uid,
        });
    }

    /// Ends expired sessions that run nothing, with their (equally expired) descendants that
    /// run nothing either. Call from the runtime.
    pub fn reap_expired(&self) {
        let now = Instant::now();
        let mut ended = {
            let mut st = self.state();
            let ids: Vec<String> = st
                .sessions
                .values()
                .filter(|s| s.expires <= now && s.running == 0)
                .map(|s| s.id.clone())
                .collect();
            if ids.is_empty() {
                return;
            }
            ids.iter()
                .map(|i| (i.clone(), self.end_locked(&mut st, vec![i.clone()])))
                .collect::<Vec<_>>()
        };
        for (id, e) in &mut ended {
            self.after_end(id, EndedBy::Expired, e);
        }
    }

    /// The operator's view of every live session, oldest first.
    pub fn sessions_view(&self) -> serde_json::Value {
        let st = self.state();
        let mut list: Vec<&Session> = st.sessions.values().collect();
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let v: Vec<_> = list
            .iter()
            .map(|s| {
                serde_json::json!({
                    "session": s.id,
                    "spawned_by": s.spawned_by,
                    "root": s.root,
                    "owner_uid": s.owner_uid,
                    "label": s.label,
                    "pairing_code_id": s.pairing_code,
                    "profile": s.profile,
                    "workspace": s.workspace,
                    "created_at": s.created_at,
                    "expires_at": s.expires_at,
                    "running_jobs": s.running,
                    "jobs": {
                        "requested": s.counts.requested,
                        "running": s.running,
                        "finished": s.counts.finished,
                        "refused": s.counts.refused,
                    },
                })
            })
            .collect();
        serde_json::json!({"sessions": v})
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use http::StatusCode;
    use serde_json::Value;

    use super::super::Server;
    use super::super::api::{Peer, Socket};
    use super::super::inproc::{Exchange, disconnected_server, exchange};

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: None,
        }
    }

    fn server(dir: &Path, extra: &str) -> Arc<Server> {
        let toml = format!(
            "[allow]\nuids = [4242, 4343, 4444]\n[paths]\nstate_dir = \"{d}\"\nworkspace_root = \"{d}/ws\"\n\
             [audit]\npath = \"{d}/audit/audit.jsonl\"\n{extra}\n",
            d = dir.display()
        );
        Arc::new(disconnected_server(&toml, "sessions-test.toml").unwrap())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn request(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Vec<u8> {
        let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        let body = body.unwrap_or("");
        let ctype = if body.is_empty() {
            ""
        } else {
            "content-type: application/json\r\n"
        };
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\n{ctype}{auth}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn json(reply: &Exchange) -> Value {
        let text = String::from_utf8_lossy(&reply.bytes);
        let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
        serde_json::from_str(body.trim()).unwrap_or(Value::Null)
    }

    /// `POST /v1/sessions` as `uid` (a child of `parent`'s token when given).
    async fn create(srv: &Arc<Server>, uid: u32, parent: Option<&str>) -> (StatusCode, Value) {
        let r = exchange(
            srv.clone(),
            Socket::Agent,
            peer(uid),
            &request("POST", "/v1/sessions", parent, Some("{}")),
        )
        .await;
        (r.statuses[0], json(&r))
    }

    fn token(v: &Value) -> String {
        v["token"].as_str().unwrap().to_string()
    }

    async fn jobs(srv: &Arc<Server>, uid: u32, token: &str) -> StatusCode {
        exchange(
            srv.clone(),
            Socket::Agent,
            peer(uid),
            &request("GET", "/v1/jobs", Some(token), None),
        )
        .await
        .statuses[0]
    }

    /// Issue 15 item 7: each child got a fresh `token_ttl`, so a 4th-generation child still
    /// ran jobs after every ancestor's token had expired.
    #[test]
    fn a_childs_token_never_outlives_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(
            dir.path(),
            "[limits]\ntoken_ttl = \"4s\"\nbad_token_limit = 100\n",
        );
        rt().block_on(async {
            let (st, root) = create(&srv, 4242, None).await;
            assert_eq!(st, StatusCode::CREATED, "{root}");
            let mut gens = vec![root];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (st, child) = create(&srv, 4242, Some(&token(gens.last().unwrap()))).await;
                assert_eq!(st, StatusCode::CREATED, "{child}");
                gens.push(child);
            }
            let root_exp = gens[0]["expires_at"].as_u64().unwrap();
            for g in &gens[1..] {
                assert!(g["expires_at"].as_u64().unwrap() <= root_exp, "{g}");
            }
            // Positive control: before the root expires, the youngest works.
            let young = token(&gens[4]);
            assert_eq!(jobs(&srv, 4242, &young).await, StatusCode::OK);
            // After the root's expiry (4 s after it was made, ~2 s ago) every generation is
            // refused, although the youngest was minted only ~2 s ago with a 4 s ttl.
            tokio::time::sleep(Duration::from_millis(2600)).await;
            for g in &gens {
                assert_eq!(jobs(&srv, 4242, &token(g)).await, StatusCode::UNAUTHORIZED);
            }
            // Nor can an expired lineage mint a new child.
            let (st, _) = create(&srv, 4242, Some(&young)).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED);
            // A new root is not affected.
            let (st, fresh) = create(&srv, 4242, None).await;
            assert_eq!(st, StatusCode::CREATED);
            assert_eq!(jobs(&srv, 4242, &token(&fresh)).await, StatusCode::OK);
        });
    }

    /// Issue 15 item 8: one agent took every `max_sessions` slot with child sessions, and
    /// every other uid and pairing got 429.
    #[test]
    fn one_uid_or_one_lineage_cannot_take_every_session_slot() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(
            dir.path(),
            "[limits]\nmax_sessions = 8\n[sessions]\nmax_per_uid = 4\nmax_per_lineage = 3\n",
        );
        rt().block_on(async {
            // One lineage: the root and two children, then refused.
            let (_, root) = create(&srv, 4242, None).await;
            let mut last = token(&root);
            for _ in 0..2 {
                let (st, c) = create(&srv, 4242, Some(&last)).await;
                assert_eq!(st, StatusCode::CREATED, "{c}");
                last = token(&c);
            }
            let (st, v) = create(&srv, 4242, Some(&last)).await;
            assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(v["error"]["code"], "lineage_session_quota", "{v}");
            // The uid may still start another root (4 of 4), then it is refused.
            let (st, _) = create(&srv, 4242, None).await;
            assert_eq!(st, StatusCode::CREATED);
            let (st, v) = create(&srv, 4242, None).await;
            assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(v["error"]["code"], "uid_session_quota", "{v}");
            // Another uid still gets a session, and so does a third one through a pairing
            // code issued by an operator.
            let (st, _) = create(&srv, 4343, None).await;
            assert_eq!(st, StatusCode::CREATED);
            let redeemed = paired(&srv, "agent c", 4444).await;
            assert_eq!(
                redeemed.statuses,
                [StatusCode::CREATED],
                "{}",
                json(&redeemed)
            );
        });
    }

    #[test]
    fn quotas_larger_than_what_contains_them_are_refused_at_start() {
        let base = "[allow]\nuids = [1]\n";
        for (extra, key) in [
            (
                "[limits]\nmax_sessions = 4\n[sessions]\nmax_per_uid = 5\n",
                "sessions.max_per_uid",
            ),
            (
                "[sessions]\nmax_per_uid = 4\nmax_per_lineage = 5\n",
                "sessions.max_per_lineage",
            ),
            ("[sessions]\nmax_artifacts = 0\n", "sessions.max_artifacts"),
        ] {
            let e = crate::config::Config::parse(&format!("{base}{extra}"), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let ok = crate::config::Config::parse(base, "t.toml").unwrap();
        assert_eq!(
            (ok.sessions.max_per_uid, ok.sessions.max_per_lineage),
            (256, 64)
        );
    }

    /// An operator issues a pairing code labelled `label`; `uid` redeems it for a root session.
    async fn paired(srv: &Arc<Server>, label: &str, uid: u32) -> Exchange {
        let body = serde_json::json!({ "label": label }).to_string();
        let issued = exchange(
            srv.clone(),
            Socket::Operator,
            peer(0),
            &request("POST", "/v1/pairing", None, Some(&body)),
        )
        .await;
        let code = json(&issued)["code"].as_str().unwrap().to_string();
        exchange(
            srv.clone(),
            Socket::Agent,
            peer(uid),
            &request(
                "POST",
                "/v1/sessions",
                None,
                Some(&format!(r#"{{"pairing_code": "{code}"}}"#)),
            ),
        )
        .await
    }

    fn audit_has(dir: &Path, kind: &str, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        // Written after the fact by a background writer: give it a moment.
        for _ in 0..200 {
            let text = std::fs::read_to_string(dir.join("audit/audit.jsonl")).unwrap_or_default();
            let hit = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| r["type"] == kind && pred(r));
            if hit.is_some() {
                return hit;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Issue 15 item 7: the operator had no way to end a session. Issue 22 item 12: the
    /// operator's list shows the pairing label, profile, workspace and job counts.
    #[test]
    fn an_operator_lists_sessions_and_ends_a_whole_lineage_on_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path(), "");
        rt().block_on(async {
            let r = paired(&srv, "ci-bot", 4242).await;
            let root = json(&r);
            let (_, child) = create(&srv, 4242, Some(&token(&root))).await;
            let (_, other) = create(&srv, 4343, None).await;
            for cmd in ["echo hi", "rm -rf /"] {
                let r = exchange(
                    srv.clone(),
                    Socket::Agent,
                    peer(4242),
                    &request(
                        "POST",
                        "/v1/exec",
                        Some(&token(&child)),
                        Some(&serde_json::json!({"command": cmd}).to_string()),
                    ),
                )
                .await;
                assert_eq!(r.statuses, [StatusCode::OK]);
            }
            let list = exchange(
                srv.clone(),
                Socket::Operator,
                peer(0),
                &request("GET", "/v1/sessions", None, None),
            )
            .await;
            let list = json(&list)["sessions"].as_array().unwrap().clone();
            let find = |v: &Value| {
                list.iter()
                    .find(|x| x["session"] == v["session"])
                    .unwrap()
                    .clone()
            };
            let (r, c, o) = (find(&root), find(&child), find(&other));
            assert_eq!(
                (&r["label"], &c["label"]),
                (&"ci-bot".into(), &"ci-bot".into())
            );
            assert_eq!(c["root"], root["session"]);
            assert_eq!(c["profile"], "default");
            assert!(c["workspace"].is_string());
            assert_eq!(c["jobs"]["requested"], 2, "{c}");
            assert_eq!(c["jobs"]["running"], 0, "{c}");
            // Refused by policy; ended at setup (the disconnected spawner runs nothing).
            assert_eq!(c["jobs"]["refused"], 1, "{c}");
            assert_eq!(c["jobs"]["finished"], 1, "{c}");
            assert!(o["label"].is_null());

            // The operator ends the root: the whole lineage goes, the other session stays.
            let end = exchange(
                srv.clone(),
                Socket::Operator,
                peer(0),
                &request(
                    "DELETE",
                    &format!("/v1/sessions/{}", root["session"].as_str().unwrap()),
                    None,
                    None,
                ),
            )
            .await;
            assert_eq!(end.statuses, [StatusCode::OK]);
            assert_eq!(json(&end)["ended_sessions"], 2);
            for t in [&root, &child] {
                assert_eq!(jobs(&srv, 4242, &token(t)).await, StatusCode::UNAUTHORIZED);
            }
            assert_eq!(jobs(&srv, 4343, &token(&other)).await, StatusCode::OK);
            let rec = audit_has(dir.path(), "session_end", |r| {
                r["session"] == root["session"]
            })
            .expect("session_end recorded");
            assert_eq!(rec["by"], "operator");
            assert_eq!(rec["operator_uid"], 0);
            assert_eq!(rec["ended"].as_array().unwrap().len(), 2);
            // Gone is gone: a second end is 404, and so is an agent's route for the operator.
            let again = exchange(
                srv.clone(),
                Socket::Operator,
                peer(0),
                &request(
                    "DELETE",
                    &format!("/v1/sessions/{}", root["session"].as_str().unwrap()),
                    None,
                    None,
                ),
            )
            .await;
            assert_eq!(again.statuses, [StatusCode::NOT_FOUND]);

            // An agent ending its own session is on the record too.
            let del = exchange(
                srv.clone(),
                Socket::Agent,
                peer(4343),
                &request(
                    "DELETE",
                    &format!("/v1/sessions/{}", other["session"].as_str().unwrap()),
                    Some(&token(&other)),
                    None,
                ),
            )
            .await;
            assert_eq!(del.statuses, [StatusCode::OK]);
            let rec = audit_has(dir.path(), "session_end", |r| {
                r["session"] == other["session"]
            })
            .expect("session_end recorded");
            assert_eq!(
                (&rec["by"], &rec["peer_uid"]),
                (&"agent".into(), &4343.into())
            );
        });
    }
}
