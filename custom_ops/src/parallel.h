// How the kernels spread work over threads.
//
// A kernel splits its batch into fixed chunks (fixed sizes, so results never depend on the
// thread count) and starts `n` workers that take chunks from a shared counter; each worker owns
// its scratch buffers. Who runs the workers is the caller's choice: the pybind11 module uses
// plain std::threads, onnxruntime passes its intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace qwthn {

struct Parallel {
  // Upper bound on the number of workers worth starting.
  int max_workers = 1;
  // Runs worker(w) for every w in [0, n) and returns when all have returned. Empty: std::thread.
  std::function<void(int n, const std::function<void(int)>& worker)> run;

  // `threads` std::threads; 0 means one per hardware thread.
  static Parallel threads(int threads) {
    Parallel p;
    p.max_workers = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
    p.max_workers = std::max(p.max_workers, 1);
    return p;
  }
};

// Scratch state of type B for each worker of one parallel_chunks call, created on first use by
// the worker that uses it (first touch: its pages land near that thread).
template <typename B>
class PerWorker {
 public:
  PerWorker(const Parallel& par, int64_t n_chunks)
      : slots_(static_cast<size_t>(std::max<int64_t>(1, std::min<int64_t>(par.max_workers,
                                                                          n_chunks)))) {}

  template <typename... Args>
  B& get(int worker, Args&&... args) {
    std::unique_ptr<B>& slot = slots_[static_cast<size_t>(worker)];
    if (!slot) slot = std::make_unique<B>(std::forward<Args>(args)...);
    return *slot;
  }

 private:
  std::vector<std::unique_ptr<B>> slots_;
};

// Runs body(worker, chunk) for every chunk in [0, n_chunks); chunks are handed out in order
// from a shared counter to at most par.max_workers workers. An exception thrown by body (e.g.
// std::bad_alloc) stops the remaining chunks and is rethrown here, on the calling thread; it
// never escapes a worker thread (that would terminate the process).
template <typename F>
void parallel_chunks(const Parallel& par, int64_t n_chunks, F&& body) {
  const int n = static_cast<int>(std::min<int64_t>(par.max_workers, n_chunks));
  if (n <= 1) {
    for (int64_t i = 0; i < n_chunks; ++i) body(0, i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;
  const std::function<void(int)> worker = [&](int w) {
    try {
      for (int64_t i; (i = next.fetch_add(1)) < n_chunks;) body(w, i);
    } catch (...) {
      next.store(n_chunks);
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  if (par.run) {
    par.run(n, worker);
  } else {
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(n - 1));
    for (int w = 1; w < n; ++w) pool.emplace_back(worker, w);
    worker(0);
    for (auto& th : pool) th.join();
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace qwthn
