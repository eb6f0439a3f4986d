import Dispatch

/// Wall-clock timing for the benchmarks.
enum Timing {
    /// Runs `body` `warmup` times untimed, then `repetitions` times timed, and returns the median in
    /// milliseconds.
    static func medianMilliseconds(warmup: Int, repetitions: Int, _ body: () -> Void) -> Double {
        for _ in 0..<warmup { body() }
        var times: [Double] = []
        for _ in 0..<repetitions {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
        }
        times.sort()
        guard !times.isEmpty else { return 0 }
        return times.count % 2 == 1 ? times[times.count / 2] : (times[times.count / 2 - 1] + times[times.count / 2]) / 2
    }
}
