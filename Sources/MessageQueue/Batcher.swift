import Synchronization

/// Group commit for calls that can share one statement. A call that finds fewer than
/// `pipelines` batches running starts one at once; calls that arrive meanwhile wait and go
/// together in the next. No timer: a lone call costs what it did alone, a few concurrent
/// callers run side by side (their commits share the database's own group commit), and
/// under load one round trip serves many. `run` gets the inputs in arrival order and
/// returns one output per input, in order.
final class Batcher<Input: Sendable, Output: Sendable>: Sendable {
    private struct State {
        var waiting: [(input: Input, reply: CheckedContinuation<Output, any Error>)] = []
        var running = 0
    }

    private let state = Mutex(State())
    private let maxBatch: Int
    private let pipelines: Int
    private let run: @Sendable ([Input]) async throws -> [Output]

    init(maxBatch: Int, pipelines: Int = 1, run: @escaping @Sendable ([Input]) async throws -> [Output]) {
        precondition(maxBatch >= 1 && pipelines >= 1)
        self.maxBatch = maxBatch
        self.pipelines = pipelines
        self.run = run
    }

    func submit(_ input: Input) async throws -> Output {
        try await withCheckedThrowingContinuation { reply in
            let leads = state.withLock { s in
                s.waiting.append((input, reply))
                if s.running >= pipelines { return false }
                s.running += 1
                return true
            }
            // Detached: the batch must not inherit the leading caller's cancellation or
            // task-locals (its read-your-writes scope would pay a WAL position query and get
            // the whole batch's position while the other callers get none).
            if leads { Task.detached { await self.drain() } }
        }
    }

    private func drain() async {
        while true {
            let batch = state.withLock { s in
                let n = min(maxBatch, s.waiting.count)
                if n == 0 { s.running -= 1 }
                let taken = Array(s.waiting.prefix(n))
                s.waiting.removeFirst(n)
                return taken
            }
            if batch.isEmpty { return }
            do {
                let outputs = try await run(batch.map(\.input))
                precondition(outputs.count == batch.count, "a batch answers every input")
                for (waiter, output) in zip(batch, outputs) { waiter.reply.resume(returning: output) }
            } catch {
                for waiter in batch { waiter.reply.resume(throwing: error) }
            }
        }
    }
}
