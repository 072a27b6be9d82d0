# nix-build (or nix-env -f . -i) with a nixpkgs on NIX_PATH; `pkgs` may be passed instead.
{
  pkgs ? import <nixpkgs> { },
}:

pkgs.callPackage ./nix/package.nix { }
