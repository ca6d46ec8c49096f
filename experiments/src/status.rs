//! `psmr status`: every node of a cluster on one screen, read from their
//! metrics endpoints (docs/operating.md, "Metrics").
//!
//! ```text
//! node   role      state  detail
//! n1     acceptor  up     ring 0: coordinator n1 term 1 (leading) decided 5120 trimmed 0 window 2
//! n101   replica   up     serving  ring 0: at 5120 of 5120 (lag 0)
//! ```
//!
//! The cluster can serve when every ring has a majority of its acceptors up
//! and at least one replica is up and answering; otherwise the command
//! exits with status 1 and says why.
//!
//! A node's page is fetched with one HTTP/1.0 GET over a plain TCP stream
//! and the Prometheus text format is read line by line: both are a few
//! lines, and an HTTP client crate would add far more than it saves here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use psmr_core::cluster::ClusterConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a node has to answer before it counts as down.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The samples of one metrics page: `name{labels}` to value.
pub(crate) type Samples = BTreeMap<String, f64>;

/// Fetches and parses the metrics page at `addr`.
pub(crate) async fn scrape(addr: SocketAddr) -> Result<Samples, String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: psmr\r\n\r\n")
            .await?;
        let mut page = String::new();
        stream.read_to_string(&mut page).await?;
        Ok::<_, std::io::Error>(page)
    };
    let page = tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let (head, body) = page.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let ok = head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200");
    if !ok {
        return Err(format!("HTTP answer {}", head.lines().next().unwrap_or("")));
    }
    Ok(parse(body))
}

/// The samples of a Prometheus text page (comments and malformed lines skipped).
pub(crate) fn parse(body: &str) -> Samples {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of `name` with `ring="<ring>"`, or of `name` alone.
fn get(samples: &Samples, name: &str, ring: Option<u16>) -> Option<f64> {
    let key = match ring {
        Some(r) => format!("{name}{{ring=\"{r}\"}}"),
        None => name.to_string(),
    };
    samples.get(&key).copied()
}

/// What `psmr status` found.
pub(crate) struct Status {
    /// The screen.
    pub(crate) text: String,
    /// Why the cluster cannot serve, if it cannot.
    pub(crate) problem: Option<String>,
}

/// Scrapes every node of `cluster` and describes the cluster.
pub(crate) async fn status(cluster: &ClusterConfig) -> Status {
    let nodes: Vec<(u32, &str, SocketAddr)> = cluster
        .endpoints()
        .map(|(role, id, _, metrics)| (id, role, metrics))
        .collect();
    let pages = futures_join(nodes.iter().map(|&(_, _, addr)| scrape(addr))).await;
    let rings: Vec<(u16, Vec<u32>)> = cluster
        .multicast()
        .rings
        .iter()
        .map(|r| (r.id.0, r.acceptors.iter().map(|a| a.0).collect()))
        .collect();
    let newest = |ring: u16| -> f64 {
        nodes
            .iter()
            .zip(&pages)
            .filter(|((_, role, _), _)| *role == "acceptor")
            .filter_map(|(_, page)| get(page.as_ref().ok()?, "psmr_ring_decided", Some(ring)))
            .fold(0.0, f64::max)
    };
    let mut text = format!("{:<7}{:<10}{:<7}detail\n", "node", "role", "state");
    for ((id, role, addr), page) in nodes.iter().zip(&pages) {
        let detail = match page {
            Err(e) => format!("{addr}: {e}"),
            Ok(page) if *role == "acceptor" => acceptor_detail(page, &rings, *id),
            Ok(page) => replica_detail(page, &rings, newest),
        };
        let state = if page.is_ok() { "up" } else { "down" };
        let _ = writeln!(text, "{:<7}{role:<10}{state:<7}{detail}", format!("n{id}"));
    }
    let up = |id: u32| {
        nodes
            .iter()
            .zip(&pages)
            .any(|((n, _, _), page)| *n == id && page.is_ok())
    };
    let mut problems = Vec::new();
    for (ring, members) in &rings {
        let live = members.iter().filter(|&&a| up(a)).count();
        if live <= members.len() / 2 {
            problems.push(format!(
                "ring {ring} has {live} of {} acceptors up, needs {}",
                members.len(),
                members.len() / 2 + 1
            ));
        }
    }
    let serving = nodes.iter().zip(&pages).any(|((_, role, _), page)| {
        *role == "replica"
            && page
                .as_ref()
                .is_ok_and(|p| get(p, "psmr_replica_serving", None) == Some(1.0))
    });
    if !serving {
        problems.push("no replica is up and answering clients".to_string());
    }
    let problem = (!problems.is_empty()).then(|| problems.join("; "));
    match &problem {
        None => text.push_str("the cluster can serve\n"),
        Some(p) => {
            let _ = writeln!(text, "the cluster cannot serve: {p}");
        }
    }
    Status { text, problem }
}

fn acceptor_detail(page: &Samples, rings: &[(u16, Vec<u32>)], id: u32) -> String {
    let mut out = Vec::new();
    for (ring, _) in rings.iter().filter(|(_, m)| m.contains(&id)) {
        let value = |name| get(page, name, Some(*ring)).unwrap_or(0.0) as u64;
        let leading = if value("psmr_ring_leading") == 1 {
            " (leading)"
        } else {
            ""
        };
        let coordinator = match value("psmr_ring_term") {
            0 => "none yet".to_string(),
            _ => format!("n{}", value("psmr_ring_coordinator")),
        };
        out.push(format!(
            "ring {ring}: coordinator {coordinator} term {}{leading} decided {} trimmed {} window {}",
            value("psmr_ring_term"),
            value("psmr_ring_decided"),
            value("psmr_ring_trimmed_below"),
            value("psmr_ring_window_in_use"),
        ));
    }
    out.join("; ")
}

fn replica_detail(
    page: &Samples,
    rings: &[(u16, Vec<u32>)],
    newest: impl Fn(u16) -> f64,
) -> String {
    let serving = match get(page, "psmr_replica_serving", None) {
        Some(1.0) => "serving",
        _ => "catching up (not answering)",
    };
    let mut out = vec![serving.to_string()];
    for (ring, _) in rings {
        let Some(at) = get(page, "psmr_learner_next", Some(*ring)) else {
            continue;
        };
        let newest =
            newest(*ring).max(get(page, "psmr_learner_newest_heard", Some(*ring)).unwrap_or(0.0));
        out.push(format!(
            "ring {ring}: at {} of {} (lag {})",
            at as u64,
            newest as u64,
            (newest - at).max(0.0) as u64
        ));
    }
    out.join("  ")
}

/// Runs every future at once and returns their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<Result<Samples, String>>
where
    F: std::future::Future<Output = Result<Samples, String>> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_parses_to_its_samples() {
        let page = "# HELP x\n# TYPE psmr_ring_decided gauge\npsmr_ring_decided{ring=\"0\"} 42\npsmr_replica_serving 1\nbroken\n";
        let samples = parse(page);
        assert_eq!(get(&samples, "psmr_ring_decided", Some(0)), Some(42.0));
        assert_eq!(get(&samples, "psmr_replica_serving", None), Some(1.0));
        assert_eq!(samples.len(), 2);
    }
}
