#include "trainer/load_model.h"

#include "checkpoint/state.h"
#include "checkpoint/store.h"
#include "model/layout.h"
#include "model/lora.h"
#include "model/state.h"

namespace latam {

Result<LoadedModel> LoadModel(const std::string& checkpoint) {
  LATAM_ASSIGN_OR_RETURN(auto reader, ckpt::CheckpointReader::Open(checkpoint));
  LoadedModel out;
  out.manifest = reader->manifest();
  out.manifest.clear_tensors();
  out.shape = ModelShape::FromConfig(out.manifest.model());
  out.params = std::make_unique<ParameterSet>(LlamaParameterSpecs(out.shape, ModelLayout::Single(out.shape)));
  LATAM_ASSIGN_OR_RETURN(const ckpt::LoadResult loaded,
                         ckpt::LoadState(*reader, out.manifest.model(), StatePieces(*out.params, nullptr, 0),
                                         ckpt::LoadWhat::kWeights));
  (void)loaded;
  // A LoRA run's checkpoint: its adapter is folded into the base weights, so
  // that generation and evaluation run the adapted model.
  if (out.manifest.adapter().kind() != config::AdapterConfig::NONE) {
    config::Config with_adapter;
    *with_adapter.mutable_model() = out.manifest.model();
    *with_adapter.mutable_adapter() = out.manifest.adapter();
    const LoraOptions lora = LoraOptionsFromConfig(with_adapter);
    ParameterSet adapter(LoraParameterSpecs(out.shape, ModelLayout::Single(out.shape), lora));
    LATAM_ASSIGN_OR_RETURN(const ckpt::LoadResult adapter_loaded,
                           ckpt::LoadState(*reader, out.manifest.model(), StatePieces(adapter, nullptr, 0),
                                           ckpt::LoadWhat::kWeights));
    (void)adapter_loaded;
    MergeLora(adapter, lora, *out.params);
    out.adapter_merged = true;
  }
  if (!out.manifest.tokenizer_file().empty()) out.tokenizer_path = reader->dir() + "/" + out.manifest.tokenizer_file();
  return out;
}

}  // namespace latam
