# Cases for nix/model-name.nix (every result must equal `expect` and be a
# valid store path name) and nix/fetch-model.nix. Evaluated by
# tests/nix/check.sh:
#   nix-instantiate --eval --strict --json tests/nix/model-name-cases.nix
# Result: [ { name; ok; detail; } ].
let
  modelName = import ../../nix/model-name.nix;
  fetchModel = import ../../nix/fetch-model.nix;

  # What Nix accepts as the name part of a store path.
  validStoreName =
    s:
    builtins.match "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*" s != null && builtins.stringLength s <= 211;

  long = builtins.concatStringsSep "" (builtins.genList (_: "abcdefghij") 30);

  cases = [
    {
      what = "Civitai download with an explicit name";
      url = "https://civitai.com/api/download/models/123?type=Model&format=SafeTensor";
      name = "pony-xl-v6.safetensors";
      expect = "pony-xl-v6.safetensors";
    }
    {
      what = "Civitai download without a name: id plus the format's extension";
      url = "https://civitai.com/api/download/models/290640?type=Model&format=SafeTensor&size=pruned&fp=fp16";
      expect = "290640.safetensors";
    }
    {
      what = "Civitai pickle";
      url = "https://civitai.com/api/download/models/5636?format=PickleTensor";
      expect = "5636.ckpt";
    }
    {
      what = "Hugging Face resolve URL with ?download=true";
      url = "https://huggingface.co/x/y/resolve/main/sd_xl_base_1.0.safetensors?download=true";
      expect = "sd_xl_base_1.0.safetensors";
    }
    {
      what = "fragment dropped";
      url = "https://example.org/models/vae-ft-mse-840000-ema-pruned.safetensors#sha256=abc";
      expect = "vae-ft-mse-840000-ema-pruned.safetensors";
    }
    {
      what = "percent escapes and spaces become _";
      url = "https://example.org/files/My%20Model%20(v2).safetensors";
      expect = "My_Model_v2_.safetensors";
    }
    {
      what = "explicit name with characters a store name cannot hold";
      url = "https://example.org/a";
      name = "détail & more.safetensors";
      expect = "d_tail_more.safetensors";
    }
    {
      what = "leading dots removed";
      url = "https://example.org/dl/..hidden.pt";
      expect = "hidden.pt";
    }
    {
      what = "trailing slash";
      url = "https://example.org/models/4x-UltraSharp.pth/";
      expect = "4x-UltraSharp.pth";
    }
    {
      what = "nothing usable: model";
      url = "https://example.org/%E2%9C%A8";
      expect = "model";
    }
    {
      what = "empty explicit name: model";
      url = "https://example.org/x.safetensors";
      name = "...";
      expect = "model";
    }
    {
      what = "long name cut, extension kept";
      url = "https://example.org/${long}.safetensors?x=1";
      expect = builtins.substring 0 (211 - 12) long + ".safetensors";
    }
    {
      what = "= and ? stay (valid in store names)";
      url = "https://example.org/a=b.gguf";
      expect = "a=b.gguf";
    }
  ];

  run =
    c:
    let
      got = modelName ({ inherit (c) url; } // (if c ? name then { inherit (c) name; } else { }));
      ok = got == c.expect && validStoreName got;
    in
    {
      name = "model name: ${c.what}";
      inherit ok;
      detail = if ok then "" else builtins.toJSON { inherit (c) url expect; inherit got; };
    };

  # fetchModel is the same fixed-output derivation as Nix's own
  # <nix/fetchurl.nix> (and so as pkgs.fetchurl) for the same name and hash.
  fetchArgs = {
    url = "https://civitai.com/api/download/models/123?type=Model&format=SafeTensor";
    hash = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
  };
  fetched = fetchModel fetchArgs;
  reference = import <nix/fetchurl.nix> (fetchArgs // { inherit (fetched) name; });
  fetchChecks = [
    {
      name = "fetchModel: store name of a Civitai URL";
      ok = fetched.name == "123.safetensors";
      detail = fetched.name;
    }
    {
      name = "fetchModel: same store path as <nix/fetchurl.nix>";
      ok = fetched.outPath == reference.outPath;
      detail = "${fetched.outPath} vs ${reference.outPath}";
    }
    {
      name = "fetchModel: fixed-output, flat, SRI hash";
      ok =
        fetched.outputHash == fetchArgs.hash
        && fetched.outputHashMode == "flat"
        && fetched.builder == "builtin:fetchurl";
      detail = "";
    }
    {
      name = "fetchModel: an explicit name wins";
      ok = (fetchModel (fetchArgs // { name = "pony-xl-v6.safetensors"; })).name == "pony-xl-v6.safetensors";
      detail = "";
    }
  ];
in
map run cases ++ fetchChecks
