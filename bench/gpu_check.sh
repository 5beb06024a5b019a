#!/usr/bin/env bash
# GPU proof run on a lent NVIDIA machine (no network there), in two stages because one call carries
# at most 64 MiB: the sample GGUF (94 MiB) travels in two halves.
#   stage1: unpack the trimmed llama-cpp-python sources (.devkit/llama_src.tar.xz), start the CUDA
#           build in the background (setsid, so it outlives the call), keep the model's first half.
#   stage2: join the model, install the pinned transformers wheel, make the Transformers form,
#           run bench/gpu_check.py's Transformers cases, wait for the build, run the llama.cpp cases.
# Results: $OUT/gpu_check.json, $OUT/build.log (tail), $OUT/run.log.
set -u
W=/tmp/gc
case "$1" in
stage1)
  mkdir -p $W && cp .devkit/a/model.part1 $W/ && tar xJf .devkit/llama_src.tar.xz -C $W || exit 1
  nvidia-smi -L; nvcc --version | tail -1; nproc
  # CMake directly (no pip, no network there): the llama library with CUDA for Hopper only, as shared
  # libraries copied into the python package's lib folder, where llama_cpp looks for them.
  setsid nohup bash -c "cd $W/llama_cpp_python-* && { cmake -S vendor/llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
    && cmake --build build -j16 --target llama && mkdir -p llama_cpp/lib && find build -name '*.so*' -exec cp -P {} llama_cpp/lib/ \; ; } \
    > $W/build.log 2>&1; echo \$? > $W/build.rc" > /dev/null 2>&1 < /dev/null &
  sleep 5; tail -3 $W/build.log; echo "stage1 done";;
stage2)
  export PYTHONUNBUFFERED=1
  cat $W/model.part1 .devkit/b/model.part2 > $W/model.gguf && sha256sum $W/model.gguf
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devkit/b/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  python3 -c "import transformers; print('transformers', transformers.__version__)"
  # The workbench's converter, without its next-token check: that check runs llama.cpp's CUDA build and
  # torch's CUDA in one process, which crashed there (SIGSEGV); the GPU cases below compare the answers.
  python3 -c "import workbench.convert as c; c.check_copy = lambda *a, **k: None; c.gguf_to_transformers('$W/model.gguf', '$W/hf')" 2>&1 | grep -v "it/s]"
  python3 bench/gpu_check.py $W/model.gguf $W/hf $OUT/gpu_check.json --skip-llama 2>&1 | tee $OUT/run.log
  cp $OUT/gpu_check.json $W/transformers.json
  for i in $(seq 1 90); do [ -f $W/build.rc ] && break; sleep 5; done
  tail -c 3000 $W/build.log > $OUT/build.log; echo "build rc: $(cat $W/build.rc 2>/dev/null || echo still-running)"
  [ "$(cat $W/build.rc 2>/dev/null)" = 0 ] || exit 1
  export PYTHONPATH=$PYTHONPATH:$(ls -d $W/llama_cpp_python-*); ls $(ls -d $W/llama_cpp_python-*)/llama_cpp/lib
  python3 bench/gpu_check.py $W/model.gguf $W/hf $OUT/gpu_check_llama.json --skip-transformers 2>&1 | tee -a $OUT/run.log;;
esac
# Diagnostic, after the cases: the converter's own check (llama.cpp CUDA and torch CUDA in one process).
if [ "${1:-}" = stage2 ]; then
  timeout 120 python3 -X faulthandler -m workbench convert $W/model.gguf --to transformers $W/hf2 > $OUT/convert_check.log 2>&1
  echo "convert with its check: rc $?"; grep -v "it/s]" $OUT/convert_check.log | tail -25
  cat user_data/logs/job-convert_to_transformers.log 2>/dev/null | grep -v "it/s]" | tail -40 > $OUT/convert_job.log
fi
