/// Renders the configuration files of the real servers a cluster runs.
public enum ServerConfigs {
    /// How long nginx keeps an idle connection to a web server. The web servers' drain and
    /// idle timeout are both longer (see `DrainService`): only nginx closes an idle one.
    public static let upstreamKeepaliveSeconds = 1
    /// A web server's drain behind nginx: three times nginx's idle timeout.
    public static let drainSeconds = 3 * upstreamKeepaliveSeconds

    /// nginx as the load balancer: passive health checks (a server that fails is out for
    /// `fail_timeout`), idempotent requests retried on another server when one fails,
    /// keep-alive to the web servers, request ids created or passed through, and the
    /// client's address and scheme forwarded.
    public static func nginx(
        listen: String, upstreams: [String], dir: String, workers: Int = 2, operators: [String] = ["127.0.0.0/8", "::1"],
        edges: [String] = []
    ) -> String {
        let unlimited = (operators + edges).map { "            \($0) 0;" }.joined(separator: "\n")
        let servers = upstreams.map { "        server \($0) max_fails=1 fail_timeout=2s;" }.joined(separator: "\n")
        let operatorLines = operators.map { "            \($0) 1;" }.joined(separator: "\n")
        return """
            # Rendered by `millions cluster`; edits are overwritten on the next scale.
            worker_processes \(workers);
            pid \(dir)/nginx.pid;
            error_log \(dir)/error.log warn;
            events { worker_connections 4096; }
            http {
                client_body_temp_path \(dir)/tmp/body;
                proxy_temp_path \(dir)/tmp/proxy;
                fastcgi_temp_path \(dir)/tmp/fastcgi;
                uwsgi_temp_path \(dir)/tmp/uwsgi;
                scgi_temp_path \(dir)/tmp/scgi;
                # Which web server answered: for the operators' own tools, not for everyone.
                geo $millions_operator {
                    default 0;
            \(operatorLines)
                }
                map $millions_operator $millions_upstream {
                    1 $upstream_addr;
                    default "";
                }
                map $http_x_request_id $millions_request_id {
                    default $http_x_request_id;
                    "" $request_id;
                }
                log_format millions '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
                                    'request_id=$millions_request_id upstream=$upstream_addr '
                                    'upstream_status=$upstream_status time=$request_time';
                access_log \(dir)/access.log millions buffer=64k flush=1s;
                client_max_body_size 32m;
                # Slow clients (as the web servers' own limits): the head within 10 s, the
                # body's bytes at least every 30 s; at most 256 connections per client
                # address, except the edge (every client comes through it) and this machine.
                client_header_timeout 10s;
                client_body_timeout 30s;
                send_timeout 30s;
                keepalive_timeout 75s;
                reset_timedout_connection on;
                geo $millions_limited {
                    default 1;
            \(unlimited)
                }
                map $millions_limited $millions_connection_key {
                    0 "";
                    default $binary_remote_addr;
                }
                limit_conn_zone $millions_connection_key zone=per_address:10m;
                limit_conn per_address 256;
                limit_conn_status 429;
                # Clients such as benchmarks keep one connection for a long time; the
                # default (1,000 requests, then close) would make them reconnect constantly.
                keepalive_requests 100000;
                upstream web {
            \(servers)
                    keepalive 64;
                    # nginx, not the web server, closes idle connections: a server that
                    # closed one could race a request nginx is sending on it. Shorter than
                    # a web server's drain (\(drainSeconds) s) and idle timeout (75 s), so a
                    # draining server's idle connections are gone before it stops.
                    keepalive_timeout \(upstreamKeepaliveSeconds)s;
                }
                server {
                    listen \(listen);
                    location / {
                        proxy_pass http://web;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Host $http_host;
                        proxy_set_header X-Request-ID $millions_request_id;
                        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                        proxy_set_header X-Forwarded-Proto $scheme;
                        proxy_set_header X-Forwarded-Host $host;
                        # Not http_503: the app answers 503 on purpose (primary down, with
                        # Retry-After), and that is not a reason to mark a server dead.
                        proxy_next_upstream error timeout http_502 http_504;
                        proxy_next_upstream_tries 3;
                        proxy_next_upstream_timeout 10s;
                        proxy_connect_timeout 1s;
                        proxy_read_timeout 30s;
                        add_header X-Upstream $millions_upstream always;
                    }
                }
            }

            """
    }

    /// Varnish as the edge: caches the content-hashed assets and photo variants (the app marks them
    /// immutable), passes everything else (pages and API answers are per user or change
    /// on writes). The origin still serves every asset if the edge is gone.
    public static func varnish(backend: Node, purgers: [String] = ["127.0.0.1"]) -> String {
        """
        vcl 4.1;
        # Rendered by `millions cluster`.
        backend origin {
            .host = "\(backend.host)";
            .port = "\(backend.port)";
        }
        # Who may purge a URL: the cluster's web servers and workers (a deleted photo).
        acl purgers {
        \(purgers.map { Self.aclEntry($0) }.joined(separator: "\n"))
        }
        sub vcl_recv {
            if (req.method == "PURGE") {
                if (client.ip !~ purgers) {
                    return (synth(405, "Not allowed"));
                }
                return (purge);
            }
            if (req.method == "GET" && (req.url ~ "^/(assets|photos)/" || req.url == "/favicon.ico")) {
                unset req.http.Cookie;
                return (hash);
            }
            return (pass);
        }
        # One site behind every name it is reached by (an address, the site's DNS name):
        # the URL alone is the key, so one PURGE drops the object whatever Host asked for it.
        sub vcl_hash {
            hash_data(req.url);
            return (lookup);
        }
        sub vcl_backend_response {
            if (bereq.url ~ "^/(assets|photos)/") {
                unset beresp.http.Set-Cookie;
            }
        }
        sub vcl_deliver {
            if (obj.hits > 0) {
                set resp.http.X-Cache = "HIT";
            } else {
                set resp.http.X-Cache = "MISS";
            }
        }

        """
    }

    /// `"198.18.0.0"/15;` for a range, `"127.0.0.1";` for one address.
    static func aclEntry(_ range: String) -> String {
        let parts = range.split(separator: "/")
        return parts.count == 2 ? "    \"\(parts[0])\"/\(parts[1]);" : "    \"\(range)\";"
    }

    /// PowerDNS's zone for the site's name: `www` answers a client with the entry of its own
    /// site (by the client's subnet) while that site's `/healthz` answers, else with the
    /// next healthy site's; `SITE.` names each site's entry. A short TTL, so clients move
    /// within seconds of a site's loss (TTL + health-check interval).
    public static func dnsZone(_ topology: Topology, ttl: Int = 5) -> String {
        let entries = topology.sites.compactMap { topology.entry(site: $0) }
        let ns = topology.nodes(.dns).first?.host ?? "127.0.0.1"
        let port = entries.first?.port ?? 80
        func subnet(_ host: String) -> String { host.split(separator: ".").prefix(3).joined(separator: ".") + ".0/24" }
        // Nearest first, then the others in the stage's order.
        func sets(_ e: Node) -> String {
            "{" + ([e] + entries.filter { $0 != e }).map { "{'\($0.host)'}" }.joined(separator: ",") + "}"
        }
        let branches = entries.map { "if netmask({'\(subnet($0.host))'}) then return ifurlup(u,\(sets($0))) end" }.joined(separator: " ")
        let lua = ";local u='http://\(Topology.siteName):\(port)/healthz' \(branches) return ifurlup(u,\(entries.first.map(sets) ?? "{}"))"
        return """
            ; Rendered by `millions cluster`.
            $TTL \(ttl)
            @ IN SOA ns.\(Topology.domain). hostmaster.\(Topology.domain). 1 60 60 60 \(ttl)
            @ IN NS ns.\(Topology.domain).
            ns IN A \(ns)
            www IN LUA A "\(lua)"
            \(entries.map { "\($0.site) IN A \($0.host)" }.joined(separator: "\n"))

            """
    }

    /// A Prometheus scrape configuration for every web server and worker of the cluster
    /// (`prometheus --config.file=.cluster/prometheus.yml` collects them all).
    public static func prometheus(web: [String], workers: [String]) -> String {
        func list(_ addresses: [String]) -> String { addresses.map { "'\($0)'" }.joined(separator: ", ") }
        return """
            # Rendered by `millions cluster` whenever the topology changes.
            global:
              scrape_interval: 5s
            scrape_configs:
              - job_name: millions-web
                static_configs:
                  - targets: [\(list(web))]
              - job_name: millions-worker
                static_configs:
                  - targets: [\(list(workers))]

            """
    }
}
