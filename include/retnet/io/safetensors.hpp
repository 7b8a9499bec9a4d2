// Safetensors files (https://github.com/huggingface/safetensors): everything retnet reads and
// writes them with, one concept per header.
//
//   retnet/io/dtype.hpp               Dtype (F64/F32/F16/BF16/I64), byte order, F16/BF16 codecs;
//                                     the standard library only
//   retnet/io/safetensors_reader.hpp  SafetensorsFile, TensorInfo: a file loaded and validated
//   retnet/io/safetensors_writer.hpp  SafetensorsWriter: a file built in memory
//
// The reader and writer parse and emit the JSON header with nlohmann/json (link retnet::io).
#pragma once

#include "retnet/io/dtype.hpp"
#include "retnet/io/safetensors_reader.hpp"
#include "retnet/io/safetensors_writer.hpp"
