import Foundation

/// " (did you mean \"x\"?)" for the candidate closest to `word` (at most a third of its letters apart,
/// ignoring case, `-` and `_`), or "" when none is close.
public func suggestion(for word: String, among candidates: [String]) -> String {
    func normal(_ s: String) -> [Character] { Array(s.lowercased().filter { $0 != "_" && $0 != "-" }) }
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count), current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
    let w = normal(word)
    guard let best = candidates.map({ ($0, distance(w, normal($0))) }).min(by: { $0.1 < $1.1 }),
          best.1 <= max(1, w.count / 3), best.0 != word else { return "" }
    return " (did you mean \"\(best.0)\"?)"
}
