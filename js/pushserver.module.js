// The client as an ES module, for pages that import rather than include:
//
//   import pushserver from '/static/pushserver/pushserver.module.js';
//   const client = pushserver.createClient();
//
// It loads the classic script beside it, which defines window.pushserver
// (keeping one a page already loaded), and exports that one object: a page
// mixing the script tag and the module shares one client library.
import './pushserver.js';

const pushserver = globalThis.pushserver;

export default pushserver;
export const { createClient } = pushserver;
