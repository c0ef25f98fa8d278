//! Where `ferry proxy` sends client commands after the cutover: one server, or the masters of a Redis
//! Cluster by slot. On a cluster, a command nutcracker cuts per server (`MGET`, `DEL`, `UNLINK`, `TOUCH`,
//! `MSET`) is cut per slot, and redirections are followed: `MOVED` (the command goes to the new owner),
//! `ASK` (`ASKING` and the command on the importing node, one write on that node's connection). A client's
//! commands keep their order: a redirected command is sent again when its reply's turn comes, and the map
//! is not changed under the client (its later commands of the slot meet the same redirection, in order).
//! `TRYAGAIN`/`CLUSTERDOWN`/`LOADING` go back to the client, as from a cluster node.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::BytesMut;

use super::backend::{Answer, Backend};
use super::table::{Route, Split};
use crate::cluster::{key_slot, Redirect, SlotMap};
use crate::endpoint::{RedisAddr, TargetSpec};
use crate::resp;

/// The target of the proxy.
#[derive(Debug)]
pub enum Target {
    One(Backend),
    Cluster(Cluster),
}

#[derive(Debug)]
pub struct Cluster {
    /// Credentials for every node (the seeds').
    auth: Option<crate::endpoint::Auth>,
    map: RwLock<SlotMap>,
    nodes: RwLock<HashMap<String, Backend>>,
}

/// One slot's part of a request: the slot, the encoded command, the request's key indexes in it.
type Part = (u16, Vec<u8>, Vec<usize>);

/// How many redirections one command follows before its client gets an error.
const MAX_HOPS: usize = 16;

impl Target {
    pub async fn start(spec: &TargetSpec) -> Result<Target, String> {
        match spec {
            TargetSpec::Redis(a) => Ok(Target::One(Backend::spawn(a.clone(), 0))),
            TargetSpec::Cluster(seeds) => {
                let (map, _) = crate::target::shard::discover(seeds).await?;
                Ok(Target::Cluster(Cluster {
                    auth: seeds.first().and_then(|s| s.auth.clone()),
                    map: RwLock::new(map),
                    nodes: RwLock::new(HashMap::new()),
                }))
            }
            other => Err(format!(
                "ferry proxy: the target must be redis:// or cluster://, not {other}"
            )),
        }
    }

    /// Every connection so far (for status).
    pub fn backends(&self) -> Vec<Backend> {
        match self {
            Target::One(b) => vec![b.clone()],
            Target::Cluster(c) => read(&c.nodes).values().cloned().collect(),
        }
    }

    /// Hand a routed request to the target now; the returned future gives the client's reply.
    pub async fn request(
        self: &Arc<Self>,
        route: Route,
        args: Vec<Vec<u8>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>> {
        let encode = |args: &[&[u8]]| {
            let mut out = BytesMut::new();
            resp::encode_command(&mut out, args);
            out.to_vec()
        };
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let c = match self.as_ref() {
            Target::One(b) => {
                let answer = b.submit(encode(&refs), 1).await;
                return Box::pin(async move { super::one(answer.await) });
            }
            Target::Cluster(_) => self.clone(),
        };
        let (split, parts): (Option<Split>, Vec<Part>) = match route {
            Route::Split(kind) => {
                let step = if kind == Split::Mset { 2 } else { 1 };
                let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
                for (i, k) in args[1..].chunks(step).enumerate() {
                    let s = key_slot(&k[0]);
                    match by_slot.iter_mut().find(|(x, _)| *x == s) {
                        Some((_, v)) => v.push(i),
                        None => by_slot.push((s, vec![i])),
                    }
                }
                let parts = by_slot
                    .into_iter()
                    .map(|(s, idx)| {
                        let mut r: Vec<&[u8]> = vec![&args[0]];
                        for &i in &idx {
                            for a in &args[1 + i * step..1 + (i + 1) * step] {
                                r.push(a);
                            }
                        }
                        (s, encode(&r), idx)
                    })
                    .collect();
                (Some(kind), parts)
            }
            Route::Key(pos) => (
                None,
                vec![(key_slot(&args[pos]), encode(&refs), Vec::new())],
            ),
            _ => (None, vec![(0, encode(&refs), Vec::new())]),
        };
        let keys = match split {
            Some(Split::Mset) => (args.len() - 1) / 2,
            _ => args.len() - 1,
        };
        let mut sent = Vec::with_capacity(parts.len());
        for (slot, bytes, idx) in parts {
            let (node, first) = c.send_to_owner(slot, bytes.clone()).await;
            sent.push((bytes, idx, node, first));
        }
        Box::pin(async move {
            let mut answers = Vec::with_capacity(sent.len());
            for (bytes, idx, node, first) in sent {
                answers.push((c.follow(bytes, node, first.await).await, idx));
            }
            match split {
                None => super::one(
                    answers
                        .pop()
                        .map(|(a, _)| a)
                        .unwrap_or(Err("no node".into())),
                ),
                Some(kind) => super::merge(kind, answers, keys),
            }
        })
    }

    fn cluster(&self) -> &Cluster {
        match self {
            Target::Cluster(c) => c,
            Target::One(_) => unreachable!("called for a cluster target only"),
        }
    }

    /// Queue `bytes` on the connection of `slot`'s owner: (that node, the answer's future).
    async fn send_to_owner(
        &self,
        slot: u16,
        bytes: Vec<u8>,
    ) -> (
        String,
        impl std::future::Future<Output = Answer> + Send + 'static,
    ) {
        let c = self.cluster();
        let node = {
            let map = read(&c.map);
            map.owner(slot)
                .map(|i| map.nodes()[i].addr.clone())
                .unwrap_or_default()
        };
        let b = c.backend(&node);
        (node, b.submit(bytes, 1).await)
    }

    /// Follow the redirections in `answer` (of `bytes`, sent to `node`) until a real reply.
    async fn follow(&self, bytes: Vec<u8>, mut node: String, mut answer: Answer) -> Answer {
        let c = self.cluster();
        for _ in 0..MAX_HOPS {
            let frames = match &answer {
                Ok(f) => f,
                Err(_) => return answer,
            };
            let Some(frame) = frames.first() else {
                return answer;
            };
            let Some(r) = (frame.first() == Some(&b'-'))
                .then(|| Redirect::parse(frame))
                .flatten()
            else {
                return answer;
            };
            match &r {
                Redirect::Moved { .. } => {
                    let Some(to) = r.resolve(&node) else {
                        return answer;
                    };
                    // The map is not updated here: a later command of this client routed to the new owner
                    // could overtake this one (sent again only when its reply's turn comes). Later
                    // commands of the slot meet MOVED too and follow in order.
                    node = to;
                    answer = c.backend(&node).submit(bytes.clone(), 1).await.await;
                }
                Redirect::Ask { .. } => {
                    let Some(to) = r.resolve(&node) else {
                        return answer;
                    };
                    let mut b = BytesMut::new();
                    resp::encode_command(&mut b, &[b"ASKING"]);
                    b.extend_from_slice(&bytes);
                    node = to;
                    answer = c
                        .backend(&node)
                        .submit(b.to_vec(), 2)
                        .await
                        .await
                        .map(|mut f| f.split_off(1.min(f.len())));
                }
                // TRYAGAIN, CLUSTERDOWN, LOADING: sent again later, this command could be overtaken by the
                // client's next ones; the client gets the error, as from a cluster node.
                _ => return answer,
            }
        }
        answer
    }
}

impl Cluster {
    /// The connection to `node` (`host:port`), opened on first use.
    fn backend(&self, node: &str) -> Backend {
        if let Some(b) = read(&self.nodes).get(node) {
            return b.clone();
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(node.to_string())
            .or_insert_with(|| {
                let (host, port) = crate::cluster::split_host_port(node).unwrap_or_default();
                Backend::spawn(
                    RedisAddr {
                        host,
                        port,
                        auth: self.auth.clone(),
                    },
                    0,
                )
            })
            .clone()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
