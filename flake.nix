{
  description = "offload: distribute Nix builds over the local machine and SSH builders";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        offload = pkgs.callPackage ./nix/package.nix { };
        default = offload;
      });

      overlays.default = final: prev: { offload = final.callPackage ./nix/package.nix { }; };

      # services.offload: installs offload and makes offload-hook Nix's build hook.
      nixosModules.default = import ./nix/module.nix;
    };
}
