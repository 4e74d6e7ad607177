import DataTier
import MillionsCore
import NIOCore
import RedisClient

/// `JobQueue` on Redis Streams: one stream per queue, read through one consumer group
/// (`workers`) in which every worker name is a consumer.
///
/// Keys, under `prefix` (default `mq`):
///
/// - `P:job:ID` — a hash per job: id, queue, payload, state, attempts, maxAttempts, runAt,
///   leaseUntil, worker, lastError, createdAt, finishedAt, and `entry`, the id of its
///   current stream entry. Ids come from `INCR P:ids`.
/// - `P:stream:Q` — an entry (`job ID`) for every job of queue Q that is due and not yet
///   finished: entries not yet delivered are the ready jobs, the group's pending entries are
///   the running ones. A finished run acknowledges (`XACK`) and deletes (`XDEL`) its entry.
/// - `P:delayed:Q` — sorted set, score runAt, members zero-padded ids: ready jobs not yet
///   due (enqueued with a delay, or waiting for a retry); the claim moves the due ones into
///   the stream.
/// - `P:leases:Q` — sorted set, score leaseUntil: the running jobs.
/// - `P:ready:Q` — sorted set, score runAt: every ready job (for `stats`).
/// - `P:counts:Q` — hash: `done` and `dead` counters. `P:dead` — sorted set of dead ids
///   (score = id, so the newest come first). `P:queues` — the set of queue names.
///
/// Leases and delays are judged by the injected `now` (passed into every script), not by
/// Redis's own idle times, so the fake clock of the tests moves them like it moves the SQL
/// drivers'. A lease that runs out hands the job to the next claim, which moves its pending
/// entry to the new consumer with `XCLAIM` (attempt + 1), or, on the last attempt, makes
/// the job dead, as the SQL drivers do.
///
/// Every state change is one Lua script (`EVAL`), so it is atomic: two claimers can never
/// take the same entry, and a worker that lost its lease cannot complete or fail the job.
/// A claim over several queues takes the oldest entry over all of them (as the SQL drivers
/// take the oldest due row), so a busy queue does not starve the others.
///
/// Unlike the SQL drivers there is no `enqueue` inside the caller's transaction: a job
/// cannot commit or roll back with a user write in another database; a caller that needs
/// that must write an outbox row with its data and enqueue from it.
///
/// Durability is Redis's: with `appendonly yes` and `appendfsync everysec` (the default
/// for AOF) a crash can lose the last second of enqueues and outcomes; a lost outcome only
/// makes the job run again, a lost enqueue loses the job.
///
/// Scripts build key names from the prefix; that is fine for one Redis server. On Redis
/// Cluster every key would need to share a slot (a prefix such as `{mq}`) and the scripts
/// would have to be routed by it.
public struct RedisJobQueue: JobQueue {
    let redis: RedisClient
    let prefix: String
    let pollSeconds: Double
    let doneRetentionSeconds: Int
    let now: @Sendable () -> Double

    /// The consumer group of every queue's stream (also written in the scripts' prelude).
    public static let group = "workers"

    /// - Parameters:
    ///   - prefix: the first part of every key, so that several queues (or test runs) can
    ///     share one server.
    ///   - pollSeconds: how long an idle worker sleeps before claiming again.
    ///   - doneRetentionSeconds: how long a done job's record stays readable by `job(id:)`
    ///     (Redis keeps everything in memory); 0 keeps it forever. The `done` count in
    ///     `stats` is a counter and is not lowered when a record expires.
    public init(
        redis: RedisClient, prefix: String = "mq", pollSeconds: Double = 0.1, doneRetentionSeconds: Int = 86_400,
        now: @escaping @Sendable () -> Double = { Clock.secondsSince1970() }
    ) {
        self.redis = redis
        self.prefix = prefix
        self.pollSeconds = pollSeconds
        self.doneRetentionSeconds = doneRetentionSeconds
        self.now = now
    }

    /// The stream of `queue` (its consumer group is `RedisJobQueue.group`).
    public func streamKey(_ queue: String) -> String { "\(prefix):stream:\(queue)" }

    /// Runs a script with the prefix as `ARGV[1]` and `args` after it. Key names are built
    /// in the scripts from the prefix, since they depend on the job's queue.
    /// `durable`: the call waits for `redis.waitReplicas` replicas (an enqueue, a completion).
    func eval(_ script: String, _ args: [String], durable: Bool = false) async throws -> RESPValue {
        var parts = [ByteBuffer(string: script), ByteBuffer(string: "0"), ByteBuffer(string: prefix)]
        parts += args.map { ByteBuffer(string: $0) }
        return try await redis.send(RedisCommand("EVAL", arguments: parts), durable: durable)
    }

    /// A job from a hash's fields (a map in RESP3, a flat array in RESP2 and from scripts);
    /// nil for null or an empty hash.
    static func job(_ reply: RESPValue) throws -> Job? {
        guard let fields = reply.elements, !fields.isEmpty else { return nil }
        func text(_ name: String) -> String? { reply[name]?.string }
        func number(_ name: String) -> Double? { text(name).flatMap { Double($0) } }
        guard let id = text("id").flatMap({ Int64($0) }), let queue = text("queue"), let payload = text("payload"),
            let state = text("state").flatMap({ Job.State(rawValue: $0) }), let attempts = text("attempts").flatMap({ Int($0) }),
            let maxAttempts = text("maxAttempts").flatMap({ Int($0) }), let runAt = number("runAt"),
            let createdAt = number("createdAt")
        else {
            throw RedisError(.protocolError, "malformed job record in redis (id \(text("id") ?? "?"), \(fields.count / 2) fields)")
        }
        return Job(
            id: id, queue: queue, payload: payload, state: state, attempts: attempts, maxAttempts: maxAttempts, runAt: runAt,
            leaseUntil: number("leaseUntil"), worker: text("worker"), lastError: text("lastError"), createdAt: createdAt,
            resultPositions: ReadYourWrites.positions(cookie: text("resultPositions") ?? ""))
    }

    static func flag(_ reply: RESPValue, _ script: String) throws -> Bool {
        guard let value = reply.int else { throw RedisError(.protocolError, "\(script) script answered \(reply)") }
        return value == 1
    }

    public func enqueue(queue: String, payload: String, maxAttempts: Int, delaySeconds: Double) async throws -> Int64 {
        let now = self.now()
        let reply = try await eval(
            Self.enqueueScript,
            [queue, payload, String(maxAttempts), String(now + delaySeconds), String(now), delaySeconds > 0 ? "1" : "0"], durable: true)
        guard let id = reply.int else { throw RedisError(.protocolError, "enqueue script answered \(reply)") }
        return id
    }

    public func claim(queues: [String], worker: String, leaseSeconds: Double) async throws -> Job? {
        guard !queues.isEmpty else { return nil }
        let now = self.now()
        let reply = try await eval(Self.claimScript, [String(now), String(now + leaseSeconds), worker] + queues)
        return try Self.job(reply)
    }

    public func heartbeat(id: Int64, worker: String, leaseSeconds: Double) async throws -> Bool {
        let until = self.now() + leaseSeconds
        let reply = try await eval(Self.heartbeatScript, [String(id), worker, String(until)])
        return try Self.flag(reply, "heartbeat")
    }

    public func complete(id: Int64, worker: String, resultPositions: [String: UInt64]) async throws {
        _ = try await eval(
            Self.completeScript, [String(id), worker, String(self.now()), String(doneRetentionSeconds), ReadYourWrites.text(resultPositions)],
            durable: true)
    }

    public func fail(id: Int64, worker: String, error: String, retryAt: Double?) async throws {
        _ = try await eval(Self.failScript, [String(id), worker, String(error.prefix(2000)), retryAt.map { String($0) } ?? ""])
    }

    public func release(id: Int64, worker: String) async throws {
        _ = try await eval(Self.releaseScript, [String(id), worker, String(self.now())])
    }

    public func job(id: Int64) async throws -> Job? {
        let reply = try await redis.send(RedisCommand("HGETALL", "\(prefix):job:\(id)"))
        return try Self.job(reply)
    }

    public func stats() async throws -> [QueueStats] {
        let now = self.now()
        let reply = try await eval(Self.statsScript, [String(now)])
        guard let rows = reply.elements else { throw RedisError(.protocolError, "stats script answered \(reply)") }
        var out: [QueueStats] = []
        for row in rows {
            guard let r = row.elements, r.count == 6, let queue = r[0].string, let ready = r[1].int, let running = r[2].int,
                let dead = r[3].int, let done = r[4].int
            else { throw RedisError(.protocolError, "stats script answered a malformed row \(row)") }
            let oldest = r[5].string.flatMap { Double($0) }
            out.append(
                QueueStats(
                    queue: queue, ready: Int(ready), running: Int(running), dead: Int(dead), done: Int(done),
                    oldestReadyAgeSeconds: oldest.map { max(0, now - $0) } ?? 0))
        }
        return out.sorted { $0.queue < $1.queue }
    }

    public func deadJobs(limit: Int) async throws -> [Job] {
        guard limit > 0 else { return [] }
        let reply = try await eval(Self.deadJobsScript, [String(limit)])
        guard let records = reply.elements else { throw RedisError(.protocolError, "dead jobs script answered \(reply)") }
        return try records.compactMap { try Self.job($0) }
    }

    public func retryDead(id: Int64) async throws -> Bool {
        let reply = try await eval(Self.retryDeadScript, [String(id), String(self.now())])
        return try Self.flag(reply, "retry")
    }

    /// Sleeps for the poll interval (at most the timeout); the worker then claims again.
    ///
    /// A blocking read (`XREAD BLOCK`, `BLPOP` on a wake-up list) would wake at once, but on
    /// the client's pooled, pipelined connections it would hold up every other caller's
    /// command behind it and trip the per-command timeout, and the protocol does not say
    /// which queues to watch. Delayed jobs and expired leases become due without any write,
    /// so a worker would have to poll for them anyway. A claim that finds nothing costs one
    /// short script.
    public func waitForWork(timeoutSeconds: Double) async throws {
        try await Task.sleep(for: .milliseconds(Int(max(0, min(pollSeconds, timeoutSeconds)) * 1000)))
    }

    // MARK: - Scripts

    // Every script gets the prefix as ARGV[1]. Times travel as strings (the caller's
    // `String(Double)`) and are stored and used as sorted-set scores as they are: Lua's
    // tostring would round them to 14 digits. Scripts return integers, strings, tables of
    // them, or nil, never booleans (whose reply differs between RESP2 and RESP3).

    static let prelude = #"""
        local P = ARGV[1]
        local GROUP = 'workers'
        local function jobkey(id) return P .. ':job:' .. id end
        local function qkey(kind, q) return P .. ':' .. kind .. ':' .. q end
        -- Members of the delayed set are zero-padded ids, so that jobs due at the same time
        -- come out in id order (sorted-set ties are ordered as strings).
        local function padded(id) return string.format('%020d', tonumber(id)) end

        -- Adds a due job's entry to its queue's stream (made, with its group, on first use).
        local function push(id, q)
          local stream = qkey('stream', q)
          if redis.call('EXISTS', stream) == 0 then
            redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
          end
          redis.call('HSET', jobkey(id), 'entry', redis.call('XADD', stream, '*', 'job', id))
        end

        -- Acknowledges and deletes a job's entry: the stream holds only ready and running jobs.
        local function drop(id, q, entry)
          if entry then
            local stream = qkey('stream', q)
            redis.call('XACK', stream, GROUP, entry)
            redis.call('XDEL', stream, entry)
            redis.call('HDEL', jobkey(id), 'entry')
          end
        end

        -- A consumer with nothing pending leaves the group (its next read brings it back),
        -- so the names of workers that are gone do not pile up.
        local function forget(q, consumer)
          local stream = qkey('stream', q)
          if consumer and redis.call('EXISTS', stream) == 1
            and #redis.call('XPENDING', stream, GROUP, '-', '+', 1, consumer) == 0 then
            redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, consumer)
          end
        end

        -- A job whose entry is already dropped and lease removed becomes a dead letter.
        local function bury(id, q, err)
          redis.call('HSET', jobkey(id), 'state', 'dead', 'lastError', err)
          redis.call('HDEL', jobkey(id), 'worker', 'leaseUntil')
          redis.call('ZADD', P .. ':dead', id, id)
          redis.call('HINCRBY', qkey('counts', q), 'dead', 1)
        end

        """#

    /// ARGV: prefix, queue, payload, maxAttempts, runAt, now, delayed ("1" or "0"). Returns the id.
    static let enqueueScript =
        prelude + #"""
        local q, payload, maxAttempts, runAt, now, delayed = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
        local n = redis.call('INCR', P .. ':ids')
        local id = string.format('%d', n)
        redis.call('HSET', jobkey(id), 'id', id, 'queue', q, 'payload', payload, 'state', 'ready', 'attempts', '0',
          'maxAttempts', maxAttempts, 'runAt', runAt, 'createdAt', now)
        redis.call('SADD', P .. ':queues', q)
        redis.call('ZADD', qkey('ready', q), runAt, id)
        if delayed == '1' then
          redis.call('ZADD', qkey('delayed', q), runAt, padded(id))
        else
          push(id, q)
        end
        return n
        """#

    /// ARGV: prefix, now, leaseUntil, worker, queue… Returns the job's fields, or nil.
    static let claimScript =
        prelude + #"""
        local now, lease, worker = ARGV[2], ARGV[3], ARGV[4]
        local queues = {}
        for i = 5, #ARGV do queues[#queues + 1] = ARGV[i] end

        local function take(id, q)
          local key = jobkey(id)
          redis.call('HINCRBY', key, 'attempts', 1)
          redis.call('HSET', key, 'state', 'running', 'worker', worker, 'leaseUntil', lease)
          redis.call('ZADD', qkey('leases', q), lease, id)
          return redis.call('HGETALL', key)
        end

        -- 1. Delayed jobs that are due join their streams (a bounded batch per claim).
        for _, q in ipairs(queues) do
          local delayed = qkey('delayed', q)
          for _, member in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 100)) do
            redis.call('ZREM', delayed, member)
            local id = string.format('%d', tonumber(member))
            if redis.call('EXISTS', jobkey(id)) == 1 then
              push(id, q)
            else
              redis.call('ZREM', qkey('ready', q), id)
            end
          end
        end

        -- 2. A job whose lease ran out: on its last attempt it is dead; else the one that
        -- ran out first, over all the queues, moves to this worker with its pending entry.
        local best, bestUntil, bestQueue
        for _, q in ipairs(queues) do
          local leases = qkey('leases', q)
          local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', '(' .. now, 'WITHSCORES', 'LIMIT', 0, 100)
          for i = 1, #expired, 2 do
            local id = expired[i]
            local job = redis.call('HMGET', jobkey(id), 'attempts', 'maxAttempts', 'entry', 'worker')
            if not job[1] then
              redis.call('ZREM', leases, id)
            elseif tonumber(job[1]) >= tonumber(job[2]) then
              redis.call('ZREM', leases, id)
              drop(id, q, job[3])
              bury(id, q, 'lease expired on the last attempt')
              forget(q, job[4])
            else
              local expiredAt = tonumber(expired[i + 1])
              if not best or expiredAt < bestUntil then best, bestUntil, bestQueue = id, expiredAt, q end
              break
            end
          end
        end
        if best then
          local job = redis.call('HMGET', jobkey(best), 'entry', 'worker')
          -- XCLAIM hands the pending entry to this consumer and counts a delivery; an entry
          -- deleted from the stream by someone else leaves the pending list instead.
          if job[1] and #redis.call('XCLAIM', qkey('stream', bestQueue), GROUP, worker, 0, job[1]) == 0 then
            redis.call('HDEL', jobkey(best), 'entry')
          end
          forget(bestQueue, job[2])
          return take(best, bestQueue)
        end

        -- 3. The oldest entry not yet delivered, over all the queues: peek at each stream's
        -- next entry after the group's last-delivered id, then XREADGROUP the oldest.
        local function lastDelivered(stream)
          for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
            local name, last
            for i = 1, #g, 2 do
              if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
            end
            if name == GROUP then return last end
          end
          redis.call('XGROUP', 'CREATE', stream, GROUP, '0')
          return '0-0'
        end
        -- An entry id starts with the server's milliseconds when it was added; within one
        -- millisecond (over several streams) the lower job id, enqueued first, goes first.
        local function rank(entry)
          return tonumber(string.match(entry[1], '^(%d+)%-')), tonumber(entry[2][2])
        end
        for _ = 1, 10 do
          local pick, pickMs, pickId
          for _, q in ipairs(queues) do
            local stream = qkey('stream', q)
            if redis.call('EXISTS', stream) == 1 then
              local head = redis.call('XRANGE', stream, '(' .. lastDelivered(stream), '+', 'COUNT', 1)
              if #head > 0 then
                local ms, id = rank(head[1])
                if not pick or ms < pickMs or (ms == pickMs and id < pickId) then pick, pickMs, pickId = q, ms, id end
              end
            end
          end
          if not pick then return nil end
          local stream = qkey('stream', pick)
          local read = redis.call('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', 1, 'STREAMS', stream, '>')
          if not read then return nil end
          local entry = read[1][2][1]
          local id = entry[2][2]
          local job = redis.call('HMGET', jobkey(id), 'state', 'entry')
          if job[1] == 'ready' and job[2] == entry[1] then
            redis.call('ZREM', qkey('ready', pick), id)
            return take(id, pick)
          end
          -- An entry that is not its job's current one (a record deleted by hand): drop it.
          redis.call('XACK', stream, GROUP, entry[1])
          redis.call('XDEL', stream, entry[1])
          forget(pick, worker)
        end
        return nil
        """#

    /// ARGV: prefix, id, worker, leaseUntil. Returns 1 if the lease was this worker's.
    static let heartbeatScript =
        prelude + #"""
        local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
        local job = redis.call('HMGET', jobkey(id), 'state', 'worker', 'queue')
        if job[1] ~= 'running' or job[2] ~= worker then return 0 end
        redis.call('HSET', jobkey(id), 'leaseUntil', lease)
        redis.call('ZADD', qkey('leases', job[3]), lease, id)
        return 1
        """#

    /// ARGV: prefix, id, worker, now, retention seconds (0: forever). Returns 1 if it counted.
    static let completeScript =
        prelude + #"""
        local id, worker, now, keep, position = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
        local job = redis.call('HMGET', jobkey(id), 'state', 'worker', 'queue', 'entry')
        if job[1] ~= 'running' or job[2] ~= worker then return 0 end
        local q = job[3]
        redis.call('ZREM', qkey('leases', q), id)
        drop(id, q, job[4])
        forget(q, worker)
        redis.call('HSET', jobkey(id), 'state', 'done', 'finishedAt', now, 'resultPositions', position)
        redis.call('HDEL', jobkey(id), 'leaseUntil')
        redis.call('HINCRBY', qkey('counts', q), 'done', 1)
        if keep > 0 then redis.call('EXPIRE', jobkey(id), keep) end
        return 1
        """#

    /// ARGV: prefix, id, worker, error, retryAt ("" for none). Returns 1 if it counted.
    static let failScript =
        prelude + #"""
        local id, worker, err, retryAt = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
        local job = redis.call('HMGET', jobkey(id), 'state', 'worker', 'queue', 'entry', 'attempts', 'maxAttempts')
        if job[1] ~= 'running' or job[2] ~= worker then return 0 end
        local q = job[3]
        redis.call('ZREM', qkey('leases', q), id)
        drop(id, q, job[4])
        forget(q, worker)
        if retryAt ~= '' then redis.call('HSET', jobkey(id), 'runAt', retryAt) end
        if retryAt ~= '' and tonumber(job[5]) < tonumber(job[6]) then
          redis.call('HSET', jobkey(id), 'state', 'ready', 'lastError', err)
          redis.call('HDEL', jobkey(id), 'worker', 'leaseUntil')
          redis.call('ZADD', qkey('delayed', q), retryAt, padded(id))
          redis.call('ZADD', qkey('ready', q), retryAt, id)
        else
          bury(id, q, err)
        end
        return 1
        """#

    /// ARGV: prefix, id, worker, now. Back to ready at the end of its stream, the run not
    /// counted. Returns 1 if it counted.
    static let releaseScript =
        prelude + #"""
        local id, worker, now = ARGV[2], ARGV[3], ARGV[4]
        local job = redis.call('HMGET', jobkey(id), 'state', 'worker', 'queue', 'entry', 'attempts')
        if job[1] ~= 'running' or job[2] ~= worker then return 0 end
        local q = job[3]
        redis.call('ZREM', qkey('leases', q), id)
        drop(id, q, job[4])
        forget(q, worker)
        local attempts = math.max((tonumber(job[5]) or 1) - 1, 0)
        redis.call('HSET', jobkey(id), 'state', 'ready', 'runAt', now, 'attempts', string.format('%d', attempts))
        redis.call('HDEL', jobkey(id), 'worker', 'leaseUntil')
        redis.call('ZADD', qkey('ready', q), now, id)
        push(id, q)
        return 1
        """#

    /// ARGV: prefix, id, now. Returns 1 if the job was dead.
    static let retryDeadScript =
        prelude + #"""
        local id, now = ARGV[2], ARGV[3]
        local job = redis.call('HMGET', jobkey(id), 'state', 'queue')
        if job[1] ~= 'dead' then return 0 end
        local q = job[2]
        redis.call('HSET', jobkey(id), 'state', 'ready', 'attempts', '0', 'runAt', now)
        redis.call('HDEL', jobkey(id), 'lastError')
        redis.call('ZREM', P .. ':dead', id)
        redis.call('HINCRBY', qkey('counts', q), 'dead', -1)
        redis.call('ZADD', qkey('ready', q), now, id)
        push(id, q)
        return 1
        """#

    /// ARGV: prefix, now. Per known queue: {queue, ready, running, dead, done, oldest due
    /// runAt or ""}.
    static let statsScript =
        prelude + #"""
        local now = ARGV[2]
        local out = {}
        for _, q in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
          local ready = qkey('ready', q)
          local counts = redis.call('HMGET', qkey('counts', q), 'dead', 'done')
          local oldest = redis.call('ZRANGEBYSCORE', ready, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
          out[#out + 1] = {q, redis.call('ZCARD', ready), redis.call('ZCARD', qkey('leases', q)),
            tonumber(counts[1] or '0'), tonumber(counts[2] or '0'), oldest[2] or ''}
        end
        return out
        """#

    /// ARGV: prefix, limit (at least 1). The newest dead jobs' fields, newest first.
    static let deadJobsScript =
        prelude + #"""
        local out = {}
        for _, id in ipairs(redis.call('ZREVRANGE', P .. ':dead', 0, tonumber(ARGV[2]) - 1)) do
          local job = redis.call('HGETALL', jobkey(id))
          if #job > 0 then out[#out + 1] = job end
        end
        return out
        """#
}
