import Type from 'typebox';

export const Live = Type.Object({ status: Type.Literal('ok') }, { $id: 'Live' });

export const Ready = Type.Object(
  {
    status: Type.Literal('ready'),
    model: Type.String(),
    execution_provider: Type.String({ description: 'ONNX Runtime execution provider in use (cpu or cuda)' }),
  },
  { $id: 'Ready' },
);
