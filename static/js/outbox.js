// Where unsent tweets wait: an IndexedDB object store keyed by client_id, one database per user.
//
// IndexedDB, not localStorage, because tabs hand the sending over to each other (a Web Lock in
// compose.js) and the next tab must see what the last one did. A transaction sees every
// transaction committed before it, in any tab; localStorage is a copy per tab that other tabs'
// writes reach a moment later, so a tab taking the lock could still find a tweet the tab before
// it had just sent, and send it again.
//
// Every method returns a promise that settles once its transaction has committed. Where
// IndexedDB cannot be opened (storage disabled), the outbox lives in this page's memory: the
// page still posts, without surviving a reload.

const STORE = "unsent";

function memoryOutbox() {
  const entries = new Map();
  return {
    list: async () => Array.from(entries.values(), (entry) => ({ ...entry })),
    put: async (entry) => void entries.set(entry.client_id, { ...entry }),
    patch: async (clientId, changes) => {
      const entry = entries.get(clientId);
      if (entry) entries.set(clientId, { ...entry, ...changes });
    },
    remove: async (clientId) => void entries.delete(clientId),
  };
}

function databaseOutbox(db) {
  // One transaction: `work` makes its requests on the store and may set the result.
  const transact = (mode, work) =>
    new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const answer = { result: undefined };
      work(tx.objectStore(STORE), answer);
      tx.oncomplete = () => resolve(answer.result);
      tx.onabort = () => reject(tx.error);
    });
  return {
    list: () =>
      transact("readonly", (store, answer) => {
        const all = store.getAll();
        all.onsuccess = () => (answer.result = all.result);
      }),
    put: (entry) => transact("readwrite", (store) => store.put(entry)),
    // Read and write in one transaction, so no other tab's change falls in between.
    patch: (clientId, changes) =>
      transact("readwrite", (store) => {
        const current = store.get(clientId);
        current.onsuccess = () => current.result && store.put({ ...current.result, ...changes });
      }),
    remove: (clientId) => transact("readwrite", (store) => store.delete(clientId)),
  };
}

function openDatabase(name) {
  return new Promise((resolve) => {
    try {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "client_id" });
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => resolve(null);
    } catch {
      resolve(null); // no IndexedDB here at all
    }
  });
}

// Tweets an earlier version of the page kept in localStorage under `legacyKey` are moved in.
export async function openOutbox(name, legacyKey) {
  const db = await openDatabase(name);
  if (!db) return memoryOutbox();
  const outbox = databaseOutbox(db);
  try {
    const legacy = JSON.parse(localStorage.getItem(legacyKey) ?? "[]");
    for (const entry of Array.isArray(legacy) ? legacy : []) if (entry?.client_id) await outbox.put(entry);
    localStorage.removeItem(legacyKey);
  } catch {
    // nothing readable there
  }
  return outbox;
}
