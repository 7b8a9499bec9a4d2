// The three computation forms of retention (paper §2.1).
#pragma once

namespace retnet {

enum class Form {
  kParallel,   ///< all positions at once, O(T²): eq. 5
  kChunkwise,  ///< parallel inside chunks, recurrent across them: eq. 7
  kRecurrent,  ///< one position at a time, O(1) per position: eq. 6
};

inline const char* formName(Form form) {
  return form == Form::kParallel    ? "parallel"
         : form == Form::kChunkwise ? "chunkwise"
                                    : "recurrent";
}

}  // namespace retnet
