// Exponential backoff with full jitter, shared by the live socket and posting.
// The wait before retry number `attempt` (0 for the first retry) is `floor` (the server's
// Retry-After) plus a random time in [0, min(cap, base * 2^attempt)]: clients refused together
// come back spread over the window after the floor, not all at the floor. All are in the same
// unit (milliseconds in this project), and so is the result.

export function delay(attempt, { base = 1000, cap = 30_000, floor = 0 } = {}, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.max(0, attempt));
  return (floor ?? 0) + Math.round(random() * ceiling);
}
