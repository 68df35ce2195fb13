/**
 * Imported first by cli.ts: libuv sizes its thread pool once, at its first use, from this variable.
 * Its default of 4 threads would be taken by four filesystem calls on a dead NFS server; with 16,
 * src/host/bounded.ts stops starting calls at 8 stuck ones and the rest keep serving.
 */
process.env.UV_THREADPOOL_SIZE ||= "16";
