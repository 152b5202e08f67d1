// Every instruction set lowbit has code for, one row each (isa_registry.cpp), and the one
// way every family of kernels (quantization, deploy products, INT8 tiles, the 8-bit
// compute mode, GPTQ's inner loops) picks its code for the current one.
//
// A row names its base: the instruction set whose code serves where a family has none for
// this one (avx512_vnni -> avx512 -> avx2 -> scalar). A family lists the rows it has code
// for (IsaImpl) and calls isa_pick(); adding an instruction set is a row here, its CPU
// test, and entries in the families that gain code for it.
#pragma once
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit {

struct IsaRow {
  const char* name;
  const char* base;      // nullptr for scalar
  bool (*cpu_has)();     // whether this CPU runs it
};

// The rows, scalar first, each after its base.
const std::vector<IsaRow>& isa_registry();

// Every row this CPU runs, scalar first: what set_isa accepts and what the test suites
// loop over.
std::vector<std::string> available_isas();
// The last of them.
std::string best_isa();
// The selected row: best_isa() unless set_isa or LOWBIT_ISA chose another.
std::string current_isa();
// Selects a row by name ("auto": the best); throws std::invalid_argument, naming the
// allowed values, for an unknown name or one this CPU does not run.
void set_isa(const std::string& name);
// Index of the selected row in isa_registry().
int current_isa_index();

// One family's code for one instruction set.
template <class T>
struct IsaImpl {
  const char* isa;
  T (*make)();
};

// The entry of `impls` for the selected instruction set, or for its base, its base's
// base, ... (every family has a scalar entry).
template <class T, size_t N>
T isa_pick(const IsaImpl<T> (&impls)[N]) {
  const std::vector<IsaRow>& rows = isa_registry();
  for (int i = current_isa_index(); i >= 0;) {
    for (const IsaImpl<T>& m : impls)
      if (std::strcmp(m.isa, rows[size_t(i)].name) == 0) return m.make();
    const char* base = rows[size_t(i)].base;
    int next = -1;
    for (size_t j = 0; base && j < rows.size(); ++j)
      if (std::strcmp(rows[j].name, base) == 0) next = int(j);
    i = next;
  }
  throw std::logic_error("isa: a kernel family has no scalar entry");
}

}  // namespace lowbit
