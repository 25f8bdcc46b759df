// Exponential backoff with full jitter, shared by the live socket and posting.
// The wait before retry number `attempt` (0 for the first retry) is `floor` (the server's
// Retry-After) plus a random time in a window of min(cap, base * 2^attempt), or of the floor
// itself if that is longer: clients refused together come back spread over [floor, 2 x floor]
// (at least), not all at the floor, which would only move the crowd 30 s on. All are in the
// same unit (milliseconds in this project), and so is the result.

export function delay(attempt, { base = 1000, cap = 30_000, floor = 0 } = {}, random = Math.random) {
  const window = Math.min(cap, Math.max(base * 2 ** Math.max(0, attempt), floor ?? 0));
  return (floor ?? 0) + Math.round(random() * window);
}
