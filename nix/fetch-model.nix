# lib.fetchModel { url, hash, name ? null }: download a model as a
# fixed-output derivation whose store name is valid and keeps the model's
# extension (./model-name.nix), e.g.
#
#   fetchModel {
#     url = "https://huggingface.co/x/y/resolve/main/sd_xl_base_1.0.safetensors?download=true";
#     hash = "sha256-...";   # SRI; `nix store prefetch-file URL` prints it
#   }
#   -> /nix/store/...-sd_xl_base_1.0.safetensors
#
# It uses Nix's built-in fetcher (the one behind <nix/fetchurl.nix>), so it
# needs no nixpkgs and no `system`: the flake's `lib` output has none to give.
# The result is the same store path pkgs.fetchurl gives for the same name and
# hash. For downloads that need a token (gated Hugging Face repos, many
# Civitai files), use the overlay's `pkgs.fetchModel`, which takes
# pkgs.fetchurl's extra arguments (curlOptsList, netrcPhase, ...).
{
  url,
  hash,
  name ? null,
}:
derivation {
  name = import ./model-name.nix { inherit url name; };
  builder = "builtin:fetchurl";
  system = "builtin";
  inherit url;
  # For nix-prefetch-url, as in <nix/fetchurl.nix>.
  urls = [ url ];
  outputHash = hash;
  outputHashMode = "flat";
  executable = false;
  unpack = false;
  # Downloading on a remote builder only to copy the result back doubles the
  # traffic for files of several GB.
  preferLocalBuild = true;
  impureEnvVars = [
    "http_proxy"
    "https_proxy"
    "ftp_proxy"
    "all_proxy"
    "no_proxy"
  ];
}
