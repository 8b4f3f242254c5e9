#include "kernels/cuda/simt_emulation.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <memory>
#include <vector>

#include "core/check.h"

thread_local latam::simt::Dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace latam::simt {

namespace {

// Fiber stacks: the kernels keep their fragments and accumulators (a few KB)
// and the emulated mma rebuilds 16 x 16 tiles on the stack.
constexpr size_t kStackBytes = 128 * 1024;

// Switching between fibers. glibc's swapcontext also saves and restores the
// signal mask, a system call at every switch: on a VM where a system call
// took 2.3 us, switching alone made one attention test run past 15 minutes.
// On x86-64 a switch keeps only what the System V ABI says a callee
// preserves (rbx, rbp, r12-r15, the MXCSR and x87 control words) on the
// fiber's own stack and swaps stack pointers; other targets use ucontext.
#if defined(__x86_64__)
// latam_simt_switch(save, resume): pushes the callee-saved state, stores the
// stack pointer in *save, loads `resume` and pops the state saved there.
// latam_simt_fiber_entry: where a new fiber's first switch returns to; it
// calls the entry function that Prepare() left in r12, which never returns.
extern "C" void latam_simt_switch(void** save, void* resume);
extern "C" void latam_simt_fiber_entry();
asm(R"(
  .text
  .p2align 4
  .globl latam_simt_switch
  .hidden latam_simt_switch
  .type latam_simt_switch, @function
latam_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size latam_simt_switch, .-latam_simt_switch

  .p2align 4
  .globl latam_simt_fiber_entry
  .hidden latam_simt_fiber_entry
  .type latam_simt_fiber_entry, @function
latam_simt_fiber_entry:
  callq *%r12
  ud2
  .size latam_simt_fiber_entry, .-latam_simt_fiber_entry
)");

struct Context {
  void* sp = nullptr;
};

void Switch(Context& from, Context& to) { latam_simt_switch(&from.sp, to.sp); }

// Lays out on the stack what latam_simt_switch pops: the control words (the
// calling thread's, as a new thread would inherit), six registers with
// `entry` in r12, and latam_simt_fiber_entry as the return address. The
// frame is 16-byte aligned, so the stack is aligned at the `call` there as
// the ABI requires.
void Prepare(Context& c, unsigned char* stack, size_t bytes, void (*entry)()) {
  const uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t{15};
  auto* frame = reinterpret_cast<uint64_t*>(top - 80);
  uint16_t x87_control = 0;
  asm volatile("fnstcw %0" : "=m"(x87_control));
  frame[0] = static_cast<uint64_t>(__builtin_ia32_stmxcsr()) | (static_cast<uint64_t>(x87_control) << 32);
  for (int i = 1; i <= 6; ++i) frame[i] = 0;  // r15, r14, r13, r12, rbx, rbp
  frame[4] = reinterpret_cast<uint64_t>(entry);
  frame[7] = reinterpret_cast<uint64_t>(&latam_simt_fiber_entry);
  c.sp = frame;
}
#else
struct Context {
  ucontext_t context;
};

void Switch(Context& from, Context& to) { swapcontext(&from.context, &to.context); }

void Prepare(Context& c, unsigned char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.context);
  c.context.uc_stack.ss_sp = stack;
  c.context.uc_stack.ss_size = bytes;
  c.context.uc_link = nullptr;
  makecontext(&c.context, entry, 0);
}
#endif

enum class Wait { kNone, kBlock, kWarp, kNamed, kYield, kDone };

struct Fiber {
  Context context;
  unsigned char* stack = nullptr;
  Wait wait = Wait::kNone;
  uint64_t generation = 0;  // of the barrier it waits at
  int named = 0;            // the named barrier it waits at (kNamed)
  int async_pending = 0;    // AsyncPending()
};

constexpr int kNamedBarriers = 16;

// One block in flight: its fibers, barrier state and shared memory.
struct Runner {
  Context scheduler;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<uint64_t> warp_generation;
  std::vector<unsigned> warp_arrived;
  uint64_t block_generation = 0;
  unsigned block_arrived = 0;
  int block_count = 0;   // __syncthreads_count accumulator of the current barrier
  int count_result = 0;  // its result, valid once the barrier released
  std::vector<unsigned char> shared;
  const std::function<void()>* body = nullptr;
  unsigned current = 0;
  uint64_t progress = 0;  // barrier arrivals, finished threads, NoteProgress()
  uint64_t named_generation[kNamedBarriers] = {};
  int named_arrived[kNamedBarriers] = {};
  int named_count[kNamedBarriers] = {};  // the count of the phase in progress (0: none)
};

thread_local Runner* runner = nullptr;
// Stacks are reused across launches (allocated, never zeroed).
thread_local std::vector<std::unique_ptr<unsigned char[]>> stack_pool;

void FiberMain() {
  (*runner->body)();
  LATAM_CHECK(runner->fibers[runner->current].async_pending == 0,
              "emulated thread " << runner->current << " of block (" << blockIdx.x << ", " << blockIdx.y << ", "
                                 << blockIdx.z << ") ended with "
                                 << runner->fibers[runner->current].async_pending
                                 << " asynchronous operations never waited for");
  ++runner->progress;
  runner->fibers[runner->current].wait = Wait::kDone;
  Switch(runner->fibers[runner->current].context, runner->scheduler);
}

// Parks the running fiber until its barrier releases.
void Park(Wait wait, uint64_t generation) {
  Fiber& f = runner->fibers[runner->current];
  f.wait = wait;
  f.generation = generation;
  Switch(f.context, runner->scheduler);
}

// The context calls live in functions of their own: with ucontext the
// compiler treats them like setjmp, and locals of a function that calls them
// may be clobbered.
__attribute__((noinline)) void StartFiber(Fiber& f) {
  Prepare(f.context, f.stack, kStackBytes, FiberMain);
  f.wait = Wait::kNone;
  f.async_pending = 0;
}

__attribute__((noinline)) void Resume(Runner& r, unsigned t) {
  r.current = t;
  threadIdx = Dim3{t, 1, 1};
  r.fibers[t].wait = Wait::kNone;
  Switch(r.scheduler, r.fibers[t].context);
}

bool Runnable(const Runner& r, unsigned t) {
  const Fiber& f = r.fibers[t];
  switch (f.wait) {
    case Wait::kNone:
    case Wait::kYield:
      return true;
    case Wait::kBlock:
      return r.block_generation != f.generation;
    case Wait::kWarp:
      return r.warp_generation[t / 32] != f.generation;
    case Wait::kNamed:
      return r.named_generation[f.named] != f.generation;
    case Wait::kDone:
      return false;
  }
  return false;
}

}  // namespace

void BlockBarrier() { BlockBarrierCount(false); }

void Yield() { Park(Wait::kYield, 0); }
void AsyncPending(int delta) { runner->fibers[runner->current].async_pending += delta; }
void NoteProgress() { ++runner->progress; }

namespace {
// Counts the calling thread at named barrier `id`; true if that completed
// the phase (which releases it).
bool ArriveNamed(int id, int count) {
  Runner& r = *runner;
  LATAM_CHECK(id > 0 && id < kNamedBarriers, "emulated named barrier id " << id << " (1-15; 0 is __syncthreads')");
  LATAM_CHECK(count > 0 && count % 32 == 0 && count <= static_cast<int>(r.fibers.size()),
              "emulated named barrier " << id << ": thread count " << count);
  LATAM_CHECK(r.named_count[id] == 0 || r.named_count[id] == count,
              "emulated named barrier " << id << " used with counts " << r.named_count[id] << " and " << count);
  ++r.progress;
  r.named_count[id] = count;
  if (++r.named_arrived[id] == count) {
    r.named_arrived[id] = 0;
    r.named_count[id] = 0;
    ++r.named_generation[id];
    return true;
  }
  return false;
}
}  // namespace

void NamedBarrierSync(int id, int count) {
  const uint64_t generation = runner->named_generation[id % kNamedBarriers];
  if (ArriveNamed(id, count)) return;
  runner->fibers[runner->current].named = id;
  Park(Wait::kNamed, generation);
}

void NamedBarrierArrive(int id, int count) { ArriveNamed(id, count); }

int BlockBarrierCount(bool predicate) {
  Runner& r = *runner;
  ++r.progress;
  const uint64_t generation = r.block_generation;
  r.block_count += predicate ? 1 : 0;
  if (++r.block_arrived == r.fibers.size()) {
    r.block_arrived = 0;
    r.count_result = r.block_count;
    r.block_count = 0;
    ++r.block_generation;
    return r.count_result;
  }
  Park(Wait::kBlock, generation);
  return r.count_result;
}

void WarpBarrier() {
  Runner& r = *runner;
  ++r.progress;
  const unsigned warp = threadIdx.x / 32;
  const unsigned lanes = std::min<unsigned>(32, static_cast<unsigned>(r.fibers.size()) - warp * 32);
  const uint64_t generation = r.warp_generation[warp];
  if (++r.warp_arrived[warp] == lanes) {
    r.warp_arrived[warp] = 0;
    ++r.warp_generation[warp];
    return;
  }
  Park(Wait::kWarp, generation);
}

Warp& CurrentWarp() { return runner->warps[threadIdx.x / 32]; }
unsigned char* SharedMemory() { return runner->shared.data(); }
size_t SharedBytes() { return runner->shared.size(); }

namespace {
thread_local uint64_t block_serial = 0;
}  // namespace
uint64_t BlockSerial() { return block_serial; }

void Launch(Dim3 grid, Dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  LATAM_CHECK(block.y == 1 && block.z == 1 && block.x >= 1 && block.x <= 1024,
              "emulated kernels take 1-D blocks of up to 1024 threads");
  LATAM_CHECK(runner == nullptr, "emulated launches do not nest");
  Runner r;
  r.body = &body;
  r.fibers.resize(block.x);
  while (stack_pool.size() < block.x) stack_pool.emplace_back(new unsigned char[kStackBytes]);
  for (unsigned t = 0; t < block.x; ++t) r.fibers[t].stack = stack_pool[t].get();
  const unsigned n_warps = (block.x + 31) / 32;
  r.warps.resize(n_warps);
  r.warp_generation.assign(n_warps, 0);
  r.warp_arrived.assign(n_warps, 0);
  runner = &r;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        r.shared.assign(shared_bytes, 0);
        ++block_serial;
        for (int i = 0; i < kNamedBarriers; ++i) r.named_arrived[i] = r.named_count[i] = 0;
        for (Fiber& f : r.fibers) StartFiber(f);
        blockIdx = Dim3{x, y, z};
        blockDim = block;
        gridDim = grid;
        // Round robin over the fibers that can run until all are done; a
        // pass in which none can run is a deadlock (a barrier some threads
        // never reach).
        unsigned done = 0;
        while (done < block.x) {
          bool progressed = false;
          const uint64_t progress_before = r.progress;
          done = 0;
          for (unsigned t = 0; t < block.x; ++t) {
            if (r.fibers[t].wait == Wait::kDone) {
              ++done;
              continue;
            }
            if (!Runnable(r, t)) continue;
            Resume(r, t);
            progressed = true;
          }
          // Threads that only yielded, with nothing changed, would do the same again.
          if (r.progress == progress_before) progressed = false;
          LATAM_CHECK(progressed || done == block.x,
                      "emulated block (" << x << ", " << y << ", " << z
                                       << ") deadlocked: its threads wait at barriers or spin without progress");
        }
        // Arrivals no one waited for mean the block's Sync and Arrive counts differ.
        for (int id = 1; id < kNamedBarriers; ++id) {
          LATAM_CHECK(r.named_arrived[id] == 0, "emulated block (" << x << ", " << y << ", " << z << ") ended with "
                                                                   << r.named_arrived[id]
                                                                   << " arrivals pending at named barrier " << id);
        }
      }
    }
  }
  runner = nullptr;
}

}  // namespace latam::simt
