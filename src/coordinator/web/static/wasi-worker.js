// Runs one WASI preview-1 module (a WASM Cargo) off the page's thread: stdin is the job's input, stdout
// is collected (capped at 4 KiB like the Island's pipe) and posted back with the exit code. The page
// terminates this worker when the job's wall clock runs out or the job is cancelled.
"use strict";

const STDOUT_CAP = 4096;
const ENOSYS = 52;
const EBADF = 8;

class Exit {
  constructor(code) { this.code = code; }
}

self.onmessage = async (event) => {
  const { module, stdin } = event.data;
  const input = new TextEncoder().encode(stdin);
  let offset = 0;
  const out = [];
  let outLength = 0;
  let instance = null;
  const view = () => new DataView(instance.exports.memory.buffer);
  const bytes = () => new Uint8Array(instance.exports.memory.buffer);

  const wasi = {
    fd_read(fd, iovs, iovsLen, nreadPtr) {
      if (fd !== 0) return EBADF;
      const dv = view();
      let total = 0;
      for (let i = 0; i < iovsLen; i++) {
        const ptr = dv.getUint32(iovs + i * 8, true);
        const len = dv.getUint32(iovs + i * 8 + 4, true);
        const chunk = input.subarray(offset, offset + len);
        bytes().set(chunk, ptr);
        offset += chunk.length;
        total += chunk.length;
        if (chunk.length < len) break;
      }
      dv.setUint32(nreadPtr, total, true);
      return 0;
    },
    fd_write(fd, iovs, iovsLen, nwrittenPtr) {
      if (fd !== 1 && fd !== 2) return EBADF;
      const dv = view();
      let total = 0;
      for (let i = 0; i < iovsLen; i++) {
        const ptr = dv.getUint32(iovs + i * 8, true);
        const len = dv.getUint32(iovs + i * 8 + 4, true);
        if (fd === 1 && outLength < STDOUT_CAP) {
          const keep = Math.min(len, STDOUT_CAP - outLength);
          out.push(bytes().slice(ptr, ptr + keep));
          outLength += keep;
        }
        total += len;
      }
      dv.setUint32(nwrittenPtr, total, true);
      return 0;
    },
    proc_exit(code) { throw new Exit(code); },
  };

  // Every import the module asks for: the three above, anything else answers "not supported".
  const imports = {};
  for (const imp of WebAssembly.Module.imports(module)) {
    imports[imp.module] = imports[imp.module] || {};
    if (imp.kind !== "function") continue;
    const own = imp.module === "wasi_snapshot_preview1" ? wasi[imp.name] : undefined;
    imports[imp.module][imp.name] = own || (() => ENOSYS);
  }

  let code = 0;
  let error = null;
  try {
    instance = await WebAssembly.instantiate(module, imports);
    if (typeof instance.exports._start === "function") instance.exports._start();
  } catch (e) {
    if (e instanceof Exit) code = e.code;
    else { code = 1; error = String(e && e.message ? e.message : e); }
  }
  const merged = new Uint8Array(outLength);
  let at = 0;
  for (const chunk of out) { merged.set(chunk, at); at += chunk.length; }
  self.postMessage({ code, stdout: new TextDecoder().decode(merged), error });
};
