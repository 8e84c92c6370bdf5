// Node.js < 22 lacks Promise.withResolvers (ES2024), which some js-libp2p 2.x
// dependencies call at run time (it-queue via mortice in @libp2p/peer-store,
// abort-error). Imported first by probe.mjs and serve.mjs; a no-op on Node 22+.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}
