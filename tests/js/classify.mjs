// node classify.mjs MODELS_DIR MODEL_NAME DTYPE IMAGE...: the top label of each image, as a JSON list, through
// transformers.js offline (fp32: onnx/model.onnx, q8: onnx/model_quantized.onnx). Run by tests/test_onnx.py.
import { env, pipeline } from "@huggingface/transformers";

const [modelsDir, modelName, dtype, ...images] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = modelsDir;
const classify = await pipeline("image-classification", modelName, { dtype });
const labels = [];
for (const image of images) labels.push((await classify(image, { top_k: 1 }))[0].label);
console.log(JSON.stringify(labels));
